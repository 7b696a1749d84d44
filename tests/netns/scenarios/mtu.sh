#!/bin/bash
# Scenario "mtu": the tunnel at every MTU users run, over an IPv4 and an IPv6 underlay.
#
#   Daemons in ns1 and ns2, joined by a veth pair whose MTU is set to exactly what the tunnel needs: the inner
#   MTU plus WireGuard's overhead (60 bytes over IPv4, 80 over IPv6; an IPv6 link never below 1280), so a
#   datagram that exceeds the path is lost instead of silently fragmented by a roomier link.
#   For each outer family and each inner MTU (IPv4 outside: 576, 1000, 1280, 1420, 1500, 8920 — 8920 is the
#   jumbo frame of a 9000-byte underlay with an IPv6 header; IPv6 outside: 1280, 1420, 8920), checks:
#     - TCP over inner IPv4 both ways and over inner IPv6 both ways (inner IPv6 needs an MTU >= 1280): a
#       MTU_TCP_BYTES transfer of pseudo-random bytes arrives whole, with the sender's sha256;
#     - UDP: MTU_UDP_COUNT numbered datagrams filling the inner MTU exactly, over inner IPv4 one way and inner
#       IPv6 (or IPv4 below 1280) the other way at once, paced 1 per ms: every datagram that arrives is intact,
#       and at least 95 % arrive;
#     - speed, as a same-run ratio so that a busy machine does not fail it: one TCP stream (iperf3, 2 s) at the
#       MTU carries at least MTU_MIN_RATIO of what it carries at 1420 over the same underlay. The bound is far
#       below the real ratio (per-packet costs make 576 slower than 1420, by about 2x for wireguard-go) and far
#       above the cliff it guards against: a super-packet limit sized for 1420 once dropped every full TCP
#       super-packet below MTU 1064, and TCP ran at 0.4 % of its 1420 speed.
#   With offloads on and off: run.sh's quick set includes this scenario, and scripts/test.sh runs it with
#   FERROGUARD_NO_OFFLOAD=1; the quick runs (FGT_QUICK=1) sweep 576, 1280 and 8920 over IPv4 and 1280 over IPv6.
#   About 60-80 s per pair.

MTU_TCP_BYTES=${FGT_MTU_TCP_BYTES:-8000000}
MTU_UDP_COUNT=300
MTU_MIN_RATIO=0.1
MTU_REFERENCE=1420

# mtu_list FAMILY: the inner MTUs swept over that outer family (the reference MTU included).
mtu_list() {
	if [[ ${FGT_QUICK:-0} == 1 ]]; then
		[[ $1 == 4 ]] && echo "576 1280 $MTU_REFERENCE 8920" || echo "1280 $MTU_REFERENCE"
	else
		[[ $1 == 4 ]] && echo "576 1000 1280 $MTU_REFERENCE 1500 8920" || echo "1280 $MTU_REFERENCE 8920"
	fi
}

# mtu_links: the veth underlay with both families' addresses; endpoints follow mtu_outer.
mtu_links() {
	topo_veth
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip2 addr add 10.0.0.2/24 dev veth2
	veths_up
}

# mtu_outer FAMILY: both peers' endpoints over that family of the underlay.
mtu_outer() {
	if [[ $1 == 4 ]]; then
		must wgc set "$IF1" peer "$pub2" endpoint 10.0.0.2:2
		must wgc set "$IF2" peer "$pub1" endpoint 10.0.0.1:1
	else
		# The IPv4 sweep's small MTUs took IPv6 off the veths, addresses included.
		mtu_set 6 1280
		must ip1 addr replace fd00:aa::1/96 dev veth1 nodad
		must ip2 addr replace fd00:aa::2/96 dev veth2 nodad
		must wgc set "$IF1" peer "$pub2" endpoint '[fd00:aa::2]:2'
		must wgc set "$IF2" peer "$pub1" endpoint '[fd00:aa::1]:1'
	fi
}

# mtu_set FAMILY MTU: the tunnel's MTU, and the underlay's at exactly what it needs.
mtu_set() {
	local family=$1 mtu=$2 underlay
	underlay=$((mtu + (family == 4 ? 60 : 80)))
	((family == 6 && underlay < 1280)) && underlay=1280
	must ip1 link set veth1 mtu "$underlay"
	must ip2 link set veth2 mtu "$underlay"
	must ip1 link set "$IF1" mtu "$mtu"
	must ip2 link set "$IF2" mtu "$mtu"
	if ((mtu >= 1280)); then
		# Below 1280 the kernel takes IPv6 off an interface, addresses included: give them back.
		must ip1 addr replace fd00::1/112 dev "$IF1" nodad
		must ip2 addr replace fd00::2/112 dev "$IF2" nodad
	fi
	# A route's cached path MTU from the previous setting must not linger.
	in_ns "$NS1" ip route flush cache >/dev/null 2>&1
	in_ns "$NS2" ip route flush cache >/dev/null 2>&1
	return 0
}

# mtu_tcp NAME SRC_NS DST_NS DST_ADDR: one verified TCP transfer.
mtu_tcp() {
	local name=$1 src=$2 dst=$3 addr=$4 ready connected go out sent got rpid
	ready=$(mktemp -u "$FGT_LOGDIR/tcp-ready-XXXXXX")
	connected=$(mktemp -u "$FGT_LOGDIR/tcp-conn-XXXXXX")
	go=$(mktemp -u "$FGT_LOGDIR/tcp-go-XXXXXX")
	out=$(mktemp "$FGT_LOGDIR/tcp-recv-XXXXXX")
	in_ns "$dst" timeout --foreground 25 python3 "$FGT_NET_PY" tcp-recv "$addr" 5401 "$ready" 20 >"$out" &
	rpid=$!
	FGT_PIDS+=("$rpid")
	if ! wait_ready_file "$ready" "$rpid" "TCP receiver"; then
		fail "$name" "the receiver did not start"
		return
	fi
	touch "$go"
	sent=$(in_ns "$src" timeout --foreground 20 python3 "$FGT_NET_PY" tcp-send "$addr" 5401 "$MTU_TCP_BYTES" \
		"$connected" "$go" 2>>"$FGT_LOGDIR/tcp-send.log")
	wait "$rpid" 2>/dev/null
	got=$(<"$out")
	if [[ -n $sent && ${sent% *} == "$got" ]]; then
		pass "$name"
	else
		fail "$name" "sent '${sent:-nothing}', received '${got:-nothing}'"
	fi
}

# mtu_udp NAME_A NS_A ADDR_A NAME_B NS_B ADDR_B SIZE_A SIZE_B: numbered datagrams to ADDR_A (in NS_A, sent from
# NS_B) and to ADDR_B (in NS_B, sent from NS_A) at once.
# Each receiver listens up to 2 s, or until every datagram arrived intact (the check counts no duplicates).
mtu_udp() {
	local name_a=$1 ns_a=$2 addr_a=$3 name_b=$4 ns_b=$5 addr_b=$6 size_a=$7 size_b=$8 seconds out_a out_b
	local ready_a ready_b pid_a pid_b spid
	seconds=$((MTU_UDP_COUNT / 1000 + 2))
	out_a=$(mktemp "$FGT_LOGDIR/udp-recv-XXXXXX") out_b=$(mktemp "$FGT_LOGDIR/udp-recv-XXXXXX")
	ready_a=$(mktemp -u "$FGT_LOGDIR/udp-ready-XXXXXX") ready_b=$(mktemp -u "$FGT_LOGDIR/udp-ready-XXXXXX")
	in_ns "$ns_a" timeout --foreground $((seconds + 5)) python3 "$FGT_NET_PY" udp-recv-all "$addr_a" 5402 \
		"$ready_a" "$seconds" "$MTU_UDP_COUNT" >"$out_a" &
	pid_a=$!
	in_ns "$ns_b" timeout --foreground $((seconds + 5)) python3 "$FGT_NET_PY" udp-recv-all "$addr_b" 5402 \
		"$ready_b" "$seconds" "$MTU_UDP_COUNT" >"$out_b" &
	pid_b=$!
	FGT_PIDS+=("$pid_a" "$pid_b")
	must wait_ready_file "$ready_a" "$pid_a"
	must wait_ready_file "$ready_b" "$pid_b"
	in_ns "$ns_a" timeout --foreground "$seconds" python3 "$FGT_NET_PY" udp-burst "$addr_b" 5402 "$MTU_UDP_COUNT" \
		"$size_b" &
	spid=$!
	FGT_PIDS+=("$spid")
	in_ns "$ns_b" timeout --foreground "$seconds" python3 "$FGT_NET_PY" udp-burst "$addr_a" 5402 "$MTU_UDP_COUNT" \
		"$size_a"
	wait "$spid" "$pid_a" "$pid_b" 2>/dev/null
	mtu_udp_check "$name_a" "$(<"$out_a")"
	mtu_udp_check "$name_b" "$(<"$out_b")"
}

# mtu_udp_check NAME "received R unique U duplicates D corrupt C"
mtu_udp_check() {
	local name=$1 summary=$2 unique corrupt
	[[ $summary =~ unique\ ([0-9]+)\ duplicates\ [0-9]+\ corrupt\ ([0-9]+) ]] || {
		fail "$name" "no summary from the receiver: '$summary'"
		return
	}
	unique=${BASH_REMATCH[1]} corrupt=${BASH_REMATCH[2]}
	if ((corrupt == 0 && unique * 100 >= MTU_UDP_COUNT * 95)); then
		pass "$name"
	else
		fail "$name" "$summary of $MTU_UDP_COUNT"
	fi
}

# mtu_speed NS_SERVER ADDR NS_CLIENT: one 2 s TCP stream through the tunnel; prints Mbit/s (0 if none).
mtu_speed() {
	local json figure
	json=$(mktemp "$FGT_LOGDIR/iperf-XXXXXX.json")
	FGT_IPERF_TIME=2 iperf_pair "$1" "$2" "$3" 5201 "$json"
	figure=$(python3 "$FGT_NET_PY" iperf-summary "$json") || figure=0
	printf '%s' "${figure%% *}"
}

# mtu_sweep FAMILY: every MTU of mtu_list over that outer family; the speed ratios against the reference.
mtu_sweep() {
	local family=$1 mtu label speed ratio
	local -A mbps=()
	mtu_outer "$family"
	for mtu in $(mtu_list "$family"); do
		label="mtu: IPv$family outside, MTU $mtu"
		mtu_set "$family" "$mtu"
		check "$label: ping v4 ns1 -> ns2" ping_all "$NS1" 192.168.241.2 5 -s $((mtu - 28)) -M do
		mtu_tcp "$label: TCP v4 ns1 -> ns2, $MTU_TCP_BYTES bytes intact" "$NS1" "$NS2" 192.168.241.2
		mtu_tcp "$label: TCP v4 ns2 -> ns1, $MTU_TCP_BYTES bytes intact" "$NS2" "$NS1" 192.168.241.1
		if ((mtu >= 1280)); then
			check "$label: ping v6 ns2 -> ns1" ping_all "$NS2" fd00::1 5 -s $((mtu - 48)) -M do
			mtu_tcp "$label: TCP v6 ns1 -> ns2, $MTU_TCP_BYTES bytes intact" "$NS1" "$NS2" fd00::2
			mtu_tcp "$label: TCP v6 ns2 -> ns1, $MTU_TCP_BYTES bytes intact" "$NS2" "$NS1" fd00::1
			mtu_udp "$label: UDP v4 ns2 -> ns1, full-size datagrams intact" "$NS1" 192.168.241.1 \
				"$label: UDP v6 ns1 -> ns2, full-size datagrams intact" "$NS2" fd00::2 $((mtu - 28)) $((mtu - 48))
		else
			mtu_udp "$label: UDP v4 ns2 -> ns1, full-size datagrams intact" "$NS1" 192.168.241.1 \
				"$label: UDP v4 ns1 -> ns2, full-size datagrams intact" "$NS2" 192.168.241.2 $((mtu - 28)) $((mtu - 28))
		fi
		mbps[$mtu]=$(mtu_speed "$NS2" 192.168.241.2 "$NS1")
		note "$label: one TCP stream ns1 -> ns2: ${mbps[$mtu]} Mbit/s"
	done
	for mtu in "${!mbps[@]}"; do
		((mtu == MTU_REFERENCE)) && continue
		ratio=$(awk -v a="${mbps[$mtu]}" -v b="${mbps[$MTU_REFERENCE]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
		label="mtu: IPv$family outside: TCP at MTU $mtu carries >= $MTU_MIN_RATIO x of MTU $MTU_REFERENCE (same run)"
		if awk -v r="$ratio" -v min="$MTU_MIN_RATIO" 'BEGIN { exit !(r >= min) }'; then
			pass "$label"
			note "ratio $ratio (${mbps[$mtu]} / ${mbps[$MTU_REFERENCE]} Mbit/s)"
		else
			fail "$label" "ratio $ratio (${mbps[$mtu]} / ${mbps[$MTU_REFERENCE]} Mbit/s)"
		fi
	done
}

scenario_mtu() {
	mtu_links
	mtu_sweep 4
	mtu_sweep 6
}
