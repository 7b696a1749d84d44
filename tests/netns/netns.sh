#!/bin/bash
# The scenarios of the Ferroguard network-namespace test suite.
#
#   netns.sh SCENARIO [ID]   run one scenario (normally called by run.sh, which numbers the results)
#   netns.sh --list          list the scenarios
#
# Environment: WG_IMPL1 / WG_IMPL2 (daemon commands; impl1 serves the interface that ends up in ns1,
# impl2 the one in ns2), FGT_RESULTS (file the result lines are appended to; default: stdout),
# FGT_LOGDIR (daemon logs etc.), FGT_SINGLE_TARGETS ("1 2": which implementations the one-daemon scenarios
# test), FGT_LABEL (prefix of every check name), FGT_OWNER / FGT_ID (names, see lib.sh).
#
# The topology follows the kernel's tools/testing/selftests/wireguard/netns.sh: ns0 owns the loopback
# endpoints, the daemons start in ns0 (so their UDP sockets live there) and their interfaces are moved to
# ns1 and ns2. Scenarios that need veth topologies start the daemons inside ns1/ns2 instead. Every scenario
# builds its own namespaces and removes them (EXIT trap), also when it fails or is killed.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
for extra in "$HERE"/scenarios/*.sh; do
	# shellcheck source=/dev/null
	[[ -e $extra ]] && source "$extra"
done

# ---------------------------------------------------------------------------------------------------------
# Helpers used by several scenarios
# ---------------------------------------------------------------------------------------------------------

# endpoint_is IFNAME PUB EXPECTED: the only peer line of "wg show IFNAME endpoints" is "PUB<TAB>EXPECTED".
endpoint_is() {
	local got
	got=$(wg show "$1" endpoints 2>&1)
	fgt_log "endpoints of $1: $got"
	[[ $got == "$2"$'\t'"$3" ]]
}

# equals WHAT GOT EXPECTED: string comparison that logs both sides.
equals() {
	[[ $2 == "$3" ]] && return 0
	fgt_log "$1: got '$2', expected '$3'"
	return 1
}

# equals_sorted WHAT GOT EXPECTED: like equals, ignoring the order of lines.
equals_sorted() { equals "$1 (sorted)" "$(sort <<<"$2")" "$(sort <<<"$3")"; }

# wg_field IFNAME WHAT: the output of "wg show IFNAME WHAT".
wg_field() { wg show "$1" "$2" 2>&1; }

# The implementations a one-daemon scenario tests (run.sh avoids testing one twice across pairs).
single_targets() { printf '%s' "${FGT_SINGLE_TARGETS-1 2}"; }

# no_single_targets NAME: record a skip when there is nothing left to test.
no_single_targets() {
	[[ -n $(single_targets) ]] && return 1
	skip "$1" "implementation(s) already covered by an earlier pair"
	return 0
}

# nat_links: the links and routes of the NAT topology below (ns1's client side 192.168.1.0/24 routed by ns0 to
# ns2's 10.0.0.0/24), without the daemons and without the NAT rule.
nat_links() {
	must ip0 link add vethrc type veth peer name vethc
	must ip0 link add vethrs type veth peer name veths
	must ip0 link set vethc netns "$NS1"
	must ip0 link set veths netns "$NS2"
	must ip0 link set vethrc up
	must ip0 link set vethrs up
	must ip0 addr add 192.168.1.1/24 dev vethrc
	must ip0 addr add 10.0.0.1/24 dev vethrs
	must ip1 addr add 192.168.1.100/24 dev vethc
	must ip1 link set vethc up
	must ip1 route add default via 192.168.1.1
	must ip2 addr add 10.0.0.100/24 dev veths
	must ip2 link set veths up
	must wait_iface_up "$NS0" vethrc
	must wait_iface_up "$NS0" vethrs
	must wait_iface_up "$NS1" vethc
	must wait_iface_up "$NS2" veths
	must sysctl_ns "$NS0" net/ipv4/ip_forward 1
}

# NAT topology of the kernel script (daemons in ns1/ns2, their sockets there; ns0 routes and SNATs):
#   ns1: IF1 192.168.241.1, vethc 192.168.1.100 -> ns0: vethrc 192.168.1.1 | vethrs 10.0.0.1 -> ns2: veths
#   10.0.0.100, IF2 192.168.241.2
topo_nat() {
	make_namespaces
	must start_daemon 1 "$IF1" "$NS1"
	must start_daemon 2 "$IF2" "$NS2"
	configure_peers
	nat_links
	must in_ns "$NS0" nft -f - <<-'EOF'
		table ip fgt_nat {
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				ip saddr 192.168.1.0/24 ip daddr 10.0.0.0/24 snat to 10.0.0.1
			}
		}
	EOF
	# Short UDP conntrack timeouts make the NAT mapping expire unless keepalives refresh it.
	must sysctl_ns "$NS0" net/netfilter/nf_conntrack_udp_timeout 2
	must sysctl_ns "$NS0" net/netfilter/nf_conntrack_udp_timeout_stream 2
}

# Veth topology of the sticky-socket tests: ns1 veth1 <-> ns2 veth2, daemons in ns1/ns2.
topo_veth() {
	make_namespaces
	must start_daemon 1 "$IF1" "$NS1"
	must start_daemon 2 "$IF2" "$NS2"
	configure_peers
	must ip1 link add veth1 type veth peer name veth2
	must ip1 link set veth2 netns "$NS2"
	must sysctl_ns "$NS1" net/ipv6/conf/all/accept_dad 0
	must sysctl_ns "$NS2" net/ipv6/conf/all/accept_dad 0
	must sysctl_ns "$NS1" net/ipv6/conf/veth1/accept_dad 0
	must sysctl_ns "$NS2" net/ipv6/conf/veth2/accept_dad 0
	must sysctl_ns "$NS1" net/ipv4/conf/veth1/promote_secondaries 1
}

# ---------------------------------------------------------------------------------------------------------
# 1. Counters and timestamps (kernel: right after configuration, before tests())
# ---------------------------------------------------------------------------------------------------------

# counter_check SIDE KIND RX TX RXSET TXSET: exact for ferroguard, the ranges of wireguard-go's netns.sh else.
counter_check() {
	local side=$1 n=$2 rx=$3 tx=$4 want_rx=$5 want_tx=$6 name
	name="counters: $side: wg show transfer"
	if [[ $(impl_kind "$n") == ferroguard ]]; then
		name+=" rx ${want_rx//|/ or }, tx ${want_tx//|/ or } (exact)"
		if [[ " ${want_rx//|/ } " == *" $rx "* && " ${want_tx//|/ } " == *" $tx "* ]]; then
			pass "$name"
		else
			fail "$name" "got rx $rx tx $tx"
		fi
	else
		name+=" within 840..2499 (wireguard-go ranges)"
		if ((rx >= 840 && rx < 2500 && tx >= 840 && tx < 2500)); then
			pass "$name"
		else
			fail "$name" "got rx $rx tx $tx"
		fi
	fi
}

scenario_counters() {
	topo_loopback
	endpoints_v4
	check "counters: 10 flood pings ns2 -> ns1, all answered" ping_all "$NS2" 192.168.241.1 10
	local rx1 tx1 rx2 tx2 ts1 ts2 lines
	read -r _ rx2 tx2 < <(wg show "$IF2" transfer)
	read -r _ rx1 tx1 < <(wg show "$IF1" transfer)
	note "ns2 (initiator): rx ${rx2:-?} tx ${tx2:-?}; ns1 (responder): rx ${rx1:-?} tx ${tx1:-?}"
	# Initiator: 92-byte response + 10 replies of 84 bytes padded to 96 (+32 header/tag) = 1372 received;
	# 148-byte initiation + 10 requests = 1428 sent, 1460 if a keepalive followed the handshake.
	counter_check "ns2 (initiator)" 2 "${rx2:-0}" "${tx2:-0}" 1372 "1428|1460"
	counter_check "ns1 (responder)" 1 "${rx1:-0}" "${tx1:-0}" "1428|1460" 1372
	read -r _ ts1 < <(wg show "$IF1" latest-handshakes)
	read -r _ ts2 < <(wg show "$IF2" latest-handshakes)
	check "counters: latest-handshakes non-zero on ns1" test "${ts1:-0}" -ne 0
	check "counters: latest-handshakes non-zero on ns2" test "${ts2:-0}" -ne 0
	check "counters: latest-handshake is the wall clock (within 10 s)" \
		test $((${ts2:-0} - $(date +%s))) -gt -10 -a $((${ts2:-0} - $(date +%s))) -lt 10
	# The TUN counts inner packets: 10 echo requests of 84 bytes went in on ns2, 10 replies came out.
	lines=$(ip -n "$NS2" -stats link show dev "$IF2")
	fgt_log "$lines"
	local rxb txb
	{ read -r _; read -r _; read -r _; read -r rxb _; read -r _; read -r txb _; } <<<"$lines"
	check "counters: ns2 TUN counts the inner bytes (840..2499 each way)" \
		test "${rxb:-0}" -ge 840 -a "${rxb:-0}" -lt 2500 -a "${txb:-0}" -ge 840 -a "${txb:-0}" -lt 2500
}

# ---------------------------------------------------------------------------------------------------------
# 2. Traffic: the kernel's tests() with IPv4 as the outer transport
# ---------------------------------------------------------------------------------------------------------

scenario_traffic() {
	topo_loopback
	endpoints_v4
	traffic_tests "traffic, v4 outer" full
}

# ---------------------------------------------------------------------------------------------------------
# 3. Big MTU and IPv6 outer transport
# ---------------------------------------------------------------------------------------------------------

scenario_big_mtu() {
	topo_loopback
	local orig_mtu big_mtu
	[[ $(ip -n "$NS1" link show dev "$IF1") =~ mtu\ ([0-9]+) ]] && orig_mtu=${BASH_REMATCH[1]}
	[[ -n $orig_mtu ]] || fgt_abort "cannot read the MTU of $IF1"
	big_mtu=$((34816 - 1500 + orig_mtu))
	endpoints_v4
	must ip1 link set "$IF1" mtu "$big_mtu"
	must ip2 link set "$IF2" mtu "$big_mtu"
	traffic_tests "big MTU $big_mtu, v4 outer" light
	must ip1 link set "$IF1" mtu "$orig_mtu"
	must ip2 link set "$IF2" mtu "$orig_mtu"
	endpoints_v6
	traffic_tests "v6 outer [::1]" light
	must ip1 link set "$IF1" mtu "$big_mtu"
	must ip2 link set "$IF2" mtu "$big_mtu"
	traffic_tests "big MTU $big_mtu, v6 outer" light
}

# ---------------------------------------------------------------------------------------------------------
# 4. Roaming
# ---------------------------------------------------------------------------------------------------------

scenario_roaming() {
	topo_loopback
	endpoints_v4
	check "roaming: session up (ns2 -> ns1)" ping_all "$NS2" 192.168.241.1 3
	# IPv4: ns0's loopback gets another address, ns1 another port; ns2 must follow.
	must ip0 -4 addr del 127.0.0.1/8 dev lo
	must ip0 -4 addr add 127.212.121.99/8 dev lo
	must wgc set "$IF1" listen-port 9999
	must wgc set "$IF1" peer "$pub2" endpoint 127.0.0.1:2
	check "roaming v4: ping ns1 -> ns2 from the new address and port" ping_once "$NS1" fd00::2
	check "roaming v4: ns2 sees ns1 at 127.212.121.99:9999" endpoint_is "$IF2" "$pub1" 127.212.121.99:9999
	# IPv6.
	must wgc set "$IF1" listen-port 9998
	must wgc set "$IF1" peer "$pub2" endpoint '[::1]:2'
	check "roaming v6: ping ns1 -> ns2 from the new port" ping_once "$NS1" 192.168.241.2
	check "roaming v6: ns2 sees ns1 at [::1]:9998" endpoint_is "$IF2" "$pub1" '[::1]:9998'
}

# ---------------------------------------------------------------------------------------------------------
# 5. Crypto-RP filter: the source of a decrypted packet must route back (longest prefix over the whole
#    device) to the peer it came from -- and the endpoint is learned before that check.
# ---------------------------------------------------------------------------------------------------------

udp_probe() { # NAME LISTEN_NS LISTEN_ADDR SEND_NS EXPECTED_COUNT SECONDS
	local name=$1
	if ! udp_listen_start "$2" "$3" 1111 "$6" "$([[ $5 == 0 ]] && echo 0 || echo 1)"; then
		fail "$name" "UDP listener did not start"
		return
	fi
	udp_send "$4" "$3" 1111 X
	udp_listen_result
	if [[ $UDP_RECEIVED == "$5" ]]; then
		pass "$name"
	else
		fail "$name" "received $UDP_RECEIVED datagram(s), expected $5"
	fi
}

scenario_crypto_rp() {
	topo_loopback
	endpoints_v6
	check "crypto-RP: session up (ns2 -> ns1)" ping_all "$NS2" 192.168.241.1 3
	must wgc set "$IF1" peer "$pub2" allowed-ips 192.168.241.0/24
	udp_probe "crypto-RP: UDP from ns2 arrives while 192.168.241.0/24 belongs to ns2's peer" \
		"$NS1" 192.168.241.1 "$NS2" 1 2
	local more_specific
	more_specific=$(wg genkey | wg pubkey)
	must wgc set "$IF1" peer "$more_specific" allowed-ips 192.168.241.2/32
	must wgc set "$IF2" listen-port 9997
	udp_probe "crypto-RP: UDP from ns2 dropped once a more specific /32 belongs to another peer" \
		"$NS1" 192.168.241.1 "$NS2" 0 1.5
	must wgc set "$IF1" peer "$more_specific" remove
	check "crypto-RP: the dropped packet still taught ns1 the new endpoint [::1]:9997" \
		endpoint_is "$IF1" "$pub2" '[::1]:9997'
	udp_probe "crypto-RP: UDP from ns2 arrives again after that peer is removed" \
		"$NS1" 192.168.241.1 "$NS2" 1 2
}

# ---------------------------------------------------------------------------------------------------------
# 7. Lifetime of the daemon (one implementation at a time)
# ---------------------------------------------------------------------------------------------------------

# second_daemon_refused N IFNAME: another daemon for a name in use must exit non-zero within 5 s and leave
# the first one serving.
second_daemon_refused() {
	local n=$1 name=$2 pid rc
	impl_command "$n"
	ip netns exec "$NS0" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${FGT_LOG_LEVEL:-verbose}" \
		"${FGT_CMD[@]}" -f "$name" >>"$FGT_LOGDIR/daemon-$name-second.log" 2>&1 &
	pid=$!
	FGT_PIDS+=("$pid")
	if ! wait_pid_exit "$pid" 5; then
		fgt_log "the second daemon for $name is still running"
		return 1
	fi
	wait "$pid"
	rc=$?
	fgt_log "second daemon exited with status $rc"
	((rc != 0))
}

lifetime_for() {
	local n=$1 name p
	name=$(ifname "L$n")
	p="lifetime (impl$n $(impl_kind "$n"))"

	check "$p: socket and interface appear within 5 s" start_daemon "$n" "$name" "$NS0" || return
	check "$p: wg show answers" wgc show "$name"
	check "$p: a second daemon for the same name is refused" second_daemon_refused "$n" "$name"
	check "$p: the first daemon still serves afterwards" wgc show "$name"
	check "$p: SIGTERM: exits, socket and interface removed" stop_daemon "$name"

	must start_daemon "$n" "$name" "$NS0"
	must ip0 link del "$name"
	check "$p: interface deleted: daemon exits within 3 s, socket removed" \
		eval 'daemon_exited "$name" 3 && wait_gone "$name" 2'

	must start_daemon "$n" "$name" "$NS0"
	must rm -f -- "$(sock_path "$name")"
	check "$p: socket file deleted: daemon exits within 3 s, interface removed" \
		eval 'daemon_exited "$name" 3 && wait_gone "$name" 2'

	must mkdir -p "$FGT_SOCK_DIR"
	must make_stale_socket "$(sock_path "$name")"
	check "$p: a stale socket file is replaced" eval 'start_daemon "$n" "$name" "$NS0" && wg show "$name" >/dev/null'
	check "$p: SIGTERM after the stale socket: clean exit" stop_daemon "$name"

	# The kernel's "circular netns references" test has this userspace analogue: the namespace holding the
	# interface disappears, the daemon must notice and exit.
	local ns_gone="$FGT_PREFIX-$FGT_OWNER-$FGT_ID-3"
	must make_namespace "$ns_gone"
	must start_daemon "$n" "$name" "$NS0"
	must ip0 link set "$name" netns "$ns_gone"
	must ip netns del "$ns_gone"
	check "$p: namespace of the interface deleted: daemon exits within 3 s, socket removed" \
		eval 'daemon_exited "$name" 3 && wait_gone "$name" 2'
}

scenario_lifetime() {
	no_single_targets "lifetime" && return
	make_namespaces
	local n
	for n in $(single_targets); do lifetime_for "$n"; done
}

# ---------------------------------------------------------------------------------------------------------
# 8. UAPI conformance, driven by the real wg(8) (one implementation at a time)
# ---------------------------------------------------------------------------------------------------------

# dump_ok IFNAME PUBLIC_KEY: "wg show all dump" has a 5-field line for IFNAME and 9-field peer lines with the
# values set by uapi_for.
dump_ok() {
	local ifname=$1 public=$2 lines iface_line peer2 peer3
	lines=$(wg show all dump 2>&1 | awk -v n="$ifname" -F'\t' '$1 == n')
	fgt_log "$lines"
	iface_line=$(awk -F'\t' 'NR == 1' <<<"$lines")
	peer2=$(awk -F'\t' -v k="$pub2" '$2 == k' <<<"$lines")
	peer3=$(awk -F'\t' -v k="$pub3" '$2 == k' <<<"$lines")
	local expect_if="$ifname"$'\t'"$key1"$'\t'"$public"$'\t'51820$'\t'0x1234
	equals "dump interface line" "$iface_line" "$expect_if" || return 1
	[[ $(wc -l <<<"$lines") == 3 ]] || { fgt_log "expected 3 lines"; return 1; }
	# Fields: iface pub psk endpoint allowed-ips latest-handshake rx tx keepalive (tx may count initiations
	# sent because of the keepalive).
	[[ $peer2 =~ ^$ifname$'\t'"$pub2"$'\t'"$psk"$'\t'127\.0\.0\.1:2$'\t'10\.0\.0\.0/24,fd00::/64$'\t'0$'\t'0$'\t'[0-9]+$'\t'25$ ]] ||
		{ fgt_log "peer 2 line unexpected"; return 1; }
	equals "dump peer 3" "$peer3" \
		"$ifname"$'\t'"$pub3"$'\t'"(none)"$'\t''[fd00::9]:51820'$'\t'10.1.0.1/32$'\t'0$'\t'0$'\t'0$'\t'off
}

# port_held_refused IFNAME PORT: with PORT taken by another socket in ns0, "wg set listen-port" must fail with
# "Address already in use".
port_held_refused() {
	local ready pid out rc
	ready=$(mktemp -u "$FGT_LOGDIR/hold-XXXXXX")
	in_ns "$NS0" timeout --foreground 30 python3 "$FGT_NET_PY" udp-hold 0.0.0.0 "$2" "$ready" &
	pid=$!
	FGT_PIDS+=("$pid")
	wait_ready_file "$ready" "$pid" "port holder"  # not fatal: the refusal checked below fails without it
	out=$(wg set "$1" listen-port "$2" 2>&1)
	rc=$?
	kill_pids "$pid"
	wait "$pid" 2>/dev/null
	fgt_log "wg set listen-port $2: status $rc: $out"
	((rc != 0)) && [[ $out == *"Address already in use"* ]]
}

uapi_for() {
	local n=$1 a b p public conf expected
	a=$(ifname "U$n")
	b=$(ifname "V$n")
	p="uapi (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"
	# The copy lives in another namespace so that its listen port cannot collide.
	must start_daemon "$n" "$b" "$NS1"
	public=$(wg pubkey <<<"$key1")
	# Multi-peer listings are compared in order only where the implementation keeps the insertion order
	# (that order is then checked on its own, below).
	local cmp=equals
	[[ -z $(unsupported_reason "$(impl_kind "$n")" peer_order) ]] || cmp=equals_sorted

	check "$p: wg set with device and peer settings" wgc set "$a" listen-port 51820 fwmark 0x1234 \
		private-key <(echo "$key1") \
		peer "$pub2" preshared-key <(echo "$psk") endpoint 127.0.0.1:2 persistent-keepalive 25 \
		allowed-ips 10.0.0.0/24,fd00::/64 \
		peer "$pub3" endpoint '[fd00::9]:51820' allowed-ips 10.1.0.1/32
	expected=$(printf '%s\n' "[Interface]" "ListenPort = 51820" "FwMark = 0x1234" "PrivateKey = $key1" "" \
		"[Peer]" "PublicKey = $pub2" "PresharedKey = $psk" "AllowedIPs = 10.0.0.0/24, fd00::/64" \
		"Endpoint = 127.0.0.1:2" "PersistentKeepalive = 25" "" \
		"[Peer]" "PublicKey = $pub3" "AllowedIPs = 10.1.0.1/32" "Endpoint = [fd00::9]:51820")
	conf=$(wg showconf "$a" 2>&1)
	check "$p: wg showconf gives back exactly what was set" "$cmp" showconf "$conf" "$expected"
	check "$p: wg show public-key is derived from the private key" equals public-key "$(wg_field "$a" public-key)" "$public"
	check "$p: wg show all dump fields" dump_ok "$a" "$public"
	check "$p: wg show endpoints (v4 and bracketed v6)" "$cmp" endpoints "$(wg_field "$a" endpoints)" \
		"$pub2"$'\t'127.0.0.1:2$'\n'"$pub3"$'\t''[fd00::9]:51820'
	check "$p: wg show persistent-keepalive" "$cmp" keepalive "$(wg_field "$a" persistent-keepalive)" \
		"$pub2"$'\t'25$'\n'"$pub3"$'\t'off

	printf '%s\n' "$conf" >"$FGT_LOGDIR/showconf-$a.conf"
	check "$p: wg setconf of that showconf output on a second interface" \
		wgc setconf "$b" "$FGT_LOGDIR/showconf-$a.conf"
	check "$p: ... and its showconf is identical (round trip)" "$cmp" round-trip "$(wg showconf "$b" 2>&1)" "$conf"

	must wgc set "$a" peer "$pub2" allowed-ips 10.9.0.0/16
	check "$p: wg set allowed-ips replaces the peer's list" "$cmp" allowed-ips "$(wg_field "$a" allowed-ips)" \
		"$pub2"$'\t'10.9.0.0/16$'\n'"$pub3"$'\t'10.1.0.1/32
	must wgc set "$a" peer "$pub3" remove
	check "$p: wg set peer remove" equals peers "$(wg_field "$a" peers)" "$pub2"
	must wgc set "$a" fwmark 0 peer "$pub2" persistent-keepalive 0 preshared-key /dev/null
	check "$p: fwmark 0 reads back as off" equals fwmark "$(wg_field "$a" fwmark)" off
	check "$p: persistent-keepalive 0 reads back as off" equals keepalive \
		"$(wg_field "$a" persistent-keepalive)" "$pub2"$'\t'off
	check "$p: preshared-key /dev/null reads back as (none)" equals psk \
		"$(wg_field "$a" preshared-keys)" "$pub2"$'\t'"(none)"
	must wgc set "$a" private-key /dev/null
	check "$p: private-key /dev/null: no private key" equals private-key "$(wg_field "$a" private-key)" "(none)"
	check "$p: private-key /dev/null: no public key" equals public-key "$(wg_field "$a" public-key)" "(none)"

	printf '%s\n' "[Peer]" "PublicKey = $pub4" "AllowedIPs = 10.4.0.0/16" >"$FGT_LOGDIR/addconf.conf"
	check "$p: wg addconf adds a peer" wgc addconf "$a" "$FGT_LOGDIR/addconf.conf"
	check "$p: ... both peers listed" equals_sorted peers "$(wg_field "$a" peers)" "$pub2"$'\n'"$pub4"
	if supported peer_order "$p: ... the new one after the existing one (insertion order)" "$n"; then
		check "$p: ... the new one after the existing one (insertion order)" equals peers \
			"$(wg_field "$a" peers)" "$pub2"$'\n'"$pub4"
	fi

	printf '%s\n' "[Interface]" "PrivateKey = $key1" "ListenPort = 51821" "" "[Peer]" "PublicKey = $pub4" \
		"AllowedIPs = 10.44.0.0/16" "" "[Peer]" "PublicKey = $pub3" "AllowedIPs = 10.3.0.0/16" \
		>"$FGT_LOGDIR/syncconf.conf"
	check "$p: wg syncconf" wgc syncconf "$a" "$FGT_LOGDIR/syncconf.conf"
	check "$p: ... removes the vanished peer, updates and adds" equals_sorted allowed-ips \
		"$(wg_field "$a" allowed-ips)" "$pub4"$'\t'10.44.0.0/16$'\n'"$pub3"$'\t'10.3.0.0/16
	check "$p: ... sets the listen port and the private key" equals port+key \
		"$(wg_field "$a" listen-port) $(wg_field "$a" private-key)" "51821 $key1"

	printf '%s\n' "[Interface]" "PrivateKey = $key2" "" "[Peer]" "PublicKey = $pub1" "AllowedIPs = 10.1.1.1/32" \
		>"$FGT_LOGDIR/setconf.conf"
	check "$p: wg setconf replaces the whole configuration" wgc setconf "$a" "$FGT_LOGDIR/setconf.conf"
	check "$p: ... peers" equals allowed-ips "$(wg_field "$a" allowed-ips)" "$pub1"$'\t'10.1.1.1/32
	check "$p: ... private key" equals private-key "$(wg_field "$a" private-key)" "$key2"

	must wgc set "$a" listen-port 51822
	check "$p: listen-port on a port taken by another socket fails with EADDRINUSE" port_held_refused "$a" 40002
	if supported keeps_port_on_bind_error "$p: the daemon keeps its previous port after that" "$n"; then
		check "$p: the daemon keeps its previous port after that" equals listen-port \
			"$(wg_field "$a" listen-port)" 51822
	fi
	check "$p: unknown interface: wg show fails" eval '! wg show "$(ifname nx)" &>/dev/null'
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_uapi() {
	no_single_targets "uapi" && return
	make_namespaces
	local n
	for n in $(single_targets); do uapi_for "$n"; done
}

# ---------------------------------------------------------------------------------------------------------
# 6a. "wg show doesnotexist" (kernel #22) and key edge cases (kernel #23)
# ---------------------------------------------------------------------------------------------------------

keys_for() {
	local n=$1 a p
	a=$(ifname "K$n")
	p="keys (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"
	must wgc set "$a" private-key <(echo "$key1") peer "$pub2" preshared-key <(echo "$psk")
	check "$p: private key reads back" equals private-key "$(wg_field "$a" private-key)" "$key1"
	check "$p: preshared key reads back" equals psk "$(wg_field "$a" preshared-keys)" "$pub2"$'\t'"$psk"
	must wgc set "$a" private-key /dev/null peer "$pub2" preshared-key /dev/null
	check "$p: /dev/null clears the private key" equals private-key "$(wg_field "$a" private-key)" "(none)"
	check "$p: /dev/null clears the preshared key" equals psk "$(wg_field "$a" preshared-keys)" "$pub2"$'\t'"(none)"
	must wgc set "$a" peer "$pub2"
	must wgc set "$a" private-key <(echo "$key2")
	check "$p: taking a peer's key as our own: public key" equals public-key "$(wg_field "$a" public-key)" "$pub2"
	check "$p: ... removes that peer" equals peers "$(wg_field "$a" peers)" ""
	must wgc set "$a" peer "$pub2"
	check "$p: ... and adding it back is ignored" equals peers "$(wg_field "$a" peers)" ""
	must wgc set "$a" private-key <(echo "$key1")
	must wgc set "$a" peer "$pub2"
	check "$p: with another private key it can be added" equals peers "$(wg_field "$a" peers)" "$pub2"
	must wgc set "$a" private-key <(echo "/${key1:1}")
	check "$p: private key is clamped (/... reads back +...)" equals private-key \
		"$(wg_field "$a" private-key)" "+${key1:1}"
	must wgc set "$a" peer "$pub2" allowed-ips 0.0.0.0/0,10.0.0.0/8,100.0.0.0/10,172.16.0.0/12,192.168.0.0/16
	must wgc set "$a" peer "$pub2" allowed-ips 0.0.0.0/0
	check "$p: 0.0.0.0/0 replaces nested v4 prefixes" equals allowed-ips "$(wg_field "$a" allowed-ips)" \
		"$pub2"$'\t'0.0.0.0/0
	must wgc set "$a" peer "$pub2" allowed-ips ::/0,1700::/111,5000::/4,e000::/37,9000::/75
	must wgc set "$a" peer "$pub2" allowed-ips ::/0
	check "$p: ::/0 replaces nested v6 prefixes" equals allowed-ips "$(wg_field "$a" allowed-ips)" "$pub2"$'\t'::/0
	must wgc set "$a" peer "$pub2" allowed-ips 192.95.5.93/27,abcd::1234/100
	check "$p: host bits are masked" equals allowed-ips "$(wg_field "$a" allowed-ips)" \
		"$pub2"$'\t'"192.95.5.64/27 abcd::/100"
	must wgc set "$a" peer "$pub2" remove
	check "$p: peer removed" equals peers "$(wg_field "$a" peers)" ""
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_keys() {
	check "wg show doesnotexist fails" eval '! wg show doesnotexist &>/dev/null'
	no_single_targets "keys" && return
	make_namespaces
	local n
	for n in $(single_targets); do keys_for "$n"; done
}

# ---------------------------------------------------------------------------------------------------------
# 6b. Low-order public keys must never produce a packet (kernel #24)
# ---------------------------------------------------------------------------------------------------------

LOW_ORDER_KEYS=(
	AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
	4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA= X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=
	7P///////////////////////////////////////38= 7f///////////////////////////////////////38=
	7v///////////////////////////////////////38=
)

low_order_for() {
	local n=$1 a p key count
	a=$(ifname "O$n")
	p="low-order keys (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"
	must wgc set "$a" private-key <(echo "$key1")
	# Listen before the peers exist: an implementation may send as soon as a keepalive is configured.
	must udp_listen_start "$NS0" 127.0.0.1 1111 3.5 0
	for key in "${LOW_ORDER_KEYS[@]}"; do
		must wgc set "$a" peer "$key" persistent-keepalive 1 endpoint 127.0.0.1:1111
	done
	count=$(wg show "$a" peers | wc -l)
	check "$p: the 7 peers are accepted" equals peer-count "$count" 7
	must ip0 link set "$a" up
	udp_listen_result
	if [[ $UDP_RECEIVED == 0 ]]; then
		pass "$p: nothing is sent to them (listened 2+ s after link up)"
	else
		fail "$p: nothing is sent to them (listened 2+ s after link up)" "$UDP_RECEIVED datagram(s) received"
	fi
	# Control: the same set-up with an ordinary key does send (so silence above means something).
	must udp_listen_start "$NS0" 127.0.0.1 1111 3 1
	must wgc set "$a" peer "$pub2" persistent-keepalive 1 endpoint 127.0.0.1:1111
	udp_listen_result
	check "$p: control: an ordinary peer with the same settings gets a handshake" equals datagrams "$UDP_RECEIVED" 1
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_low_order() {
	no_single_targets "low_order" && return
	make_namespaces
	local n
	for n in $(single_targets); do low_order_for "$n"; done
}

# ---------------------------------------------------------------------------------------------------------
# 6c. Key change and immediate handshake (kernel #9)
# ---------------------------------------------------------------------------------------------------------

scenario_key_change() {
	topo_loopback
	must wgc set "$IF1" private-key <(echo "$key1") peer "$pub2" preshared-key <(echo "$psk") \
		allowed-ips 192.168.241.2/32 endpoint 127.0.0.1:2
	must wgc set "$IF2" private-key <(echo "$key2") listen-port 2 peer "$pub1" preshared-key <(echo "$psk") \
		allowed-ips 192.168.241.1/32
	check "key change: ping ns1 -> ns2 with the first key" ping_once "$NS1" 192.168.241.2
	must wgc set "$IF1" private-key <(echo "$key3")
	must wgc set "$IF2" peer "$pub3" preshared-key <(echo "$psk") allowed-ips 192.168.241.1/32 peer "$pub1" remove
	check "key change: ping ns1 -> ns2 right after the change (new handshake)" ping_once "$NS1" 192.168.241.2
	check "key change: ns2 has exactly the new peer" equals peers "$(wg_field "$IF2" peers)" "$pub3"
	local ts
	read -r _ ts < <(wg show "$IF2" latest-handshakes)
	check "key change: handshake with the new key recorded" test "${ts:-0}" -ne 0
	check "key change: ping ns2 -> ns1 over the new session" ping_once "$NS2" 192.168.241.1
}

# ---------------------------------------------------------------------------------------------------------
# 6d. NAT + persistent keepalive (kernel #12)
# ---------------------------------------------------------------------------------------------------------

scenario_nat_keepalive() {
	topo_nat
	must wgc set "$IF1" peer "$pub2" endpoint 10.0.0.100:2 persistent-keepalive 1
	check "NAT: ping ns1 -> ns2 through the SNAT" ping_once "$NS1" 192.168.241.2
	check "NAT: ping ns2 -> ns1" ping_once "$NS2" 192.168.241.1
	check "NAT: ns2 sees ns1 at the translated 10.0.0.1:1" endpoint_is "$IF2" "$pub1" 10.0.0.1:1
	sleep 3
	check "NAT: after 3 s (conntrack UDP timeout --foreground 2 s) ns2 still reaches ns1: keepalives hold the mapping" \
		ping_once "$NS2" 192.168.241.1
	# Control: without keepalives the mapping expires, which shows that the keepalives above mattered.
	must wgc set "$IF1" peer "$pub2" persistent-keepalive 0
	sleep 3.5
	check "NAT (control): with keepalives off the mapping expires and ns2 cannot reach ns1" \
		eval '! ping_once "$NS2" 192.168.241.1'
}

# ---------------------------------------------------------------------------------------------------------
# 6e. wg-quick style policy routing with fwmark 51820 (kernel #15)
# ---------------------------------------------------------------------------------------------------------

scenario_policy_routing() {
	topo_nat
	must wgc set "$IF1" peer "$pub2" endpoint 10.0.0.100:2
	check "policy routing: session up (ns1 -> ns2)" ping_once "$NS1" 192.168.241.2
	# A v6 address on vethc to tease out bugs, as the kernel test does.
	must ip1 -6 addr add fc00::9/96 dev vethc
	must ip1 -6 route add default via fc00::1
	must ip2 -4 addr add 192.168.99.7/32 dev "$IF2"
	must ip2 -6 addr add abab::1111/128 dev "$IF2"
	must wgc set "$IF1" fwmark 51820 peer "$pub2" allowed-ips 192.168.99.7,abab::1111
	check "policy routing: fwmark reads back" equals fwmark "$(wg_field "$IF1" fwmark)" 0xca6c
	local v
	for v in -4 -6; do
		must ip1 "$v" route add default dev "$IF1" table 51820
		must ip1 "$v" rule add not fwmark 51820 table 51820
		must ip1 "$v" rule add table main suppress_prefixlength 0
	done
	must sysctl_ns "$NS1" net/ipv4/conf/vethc/rp_filter 0
	# Without SO_MARK on the daemon's sockets its own UDP would be routed into the tunnel.
	check "policy routing: 100 flood pings v4 through the default route" ping_all "$NS1" 192.168.99.7 100
	check "policy routing: 100 flood pings v6 through the default route" ping_all "$NS1" abab::1111 100
}

# ---------------------------------------------------------------------------------------------------------
# 6f. ICMP unreachable on the right path (kernel #16)
# ---------------------------------------------------------------------------------------------------------

scenario_icmp_unreachable() {
	topo_nat
	must wgc set "$IF1" peer "$pub2" endpoint 10.0.0.100:2
	check "ICMP: session up (ns1 -> ns2)" ping_once "$NS1" 192.168.241.2
	# ns2 routes ns0's packets into its tunnel, NATed to its tunnel address.
	must in_ns "$NS2" nft -f - <<-'EOF'
		table ip fgt_nat {
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				ip saddr 10.0.0.0/24 ip daddr 192.168.241.0/24 snat to 192.168.241.2
			}
		}
	EOF
	must sysctl_ns "$NS2" net/ipv4/ip_forward 1
	must ip0 -4 route add 192.168.241.1 via 10.0.0.100
	check "ICMP (control): ns0 reaches ns1 through ns2's tunnel" ping_once "$NS0" 192.168.241.1
	must wgc set "$IF2" peer "$pub1" remove
	local out name="ICMP: with no peer for the destination ns0 gets Destination Host Unreachable"
	supported icmp_unreachable "$name" 2 || return 0
	# The kernel also drops, in ns0, anything from vethrs not sourced in 10.0.0.0/24 and expects
	# "From 10.0.0.100": its ICMP is generated by ns2's own stack. A userspace daemon can only write the ICMP
	# into its TUN, where ns2 forwards it with the source the daemon chose, so only the message is required.
	out=$(in_ns "$NS0" timeout --foreground 10 ping -n -c 1 -W 1 192.168.241.1 2>&1)
	fgt_log "$out"
	if [[ $out =~ From\ ([^ ]+)\ icmp_seq=1\ Destination\ Host\ Unreachable ]]; then
		pass "$name"
		note "ICMP error from ${BASH_REMATCH[1]} (the kernel's comes from 10.0.0.100)"
	else
		fail "$name" "ping said: $(tr '\n' ' ' <<<"$out")"
	fi
}

# ---------------------------------------------------------------------------------------------------------
# 6g. Sticky but not too sticky (kernel #17), reply to sender (#18), other interface (#19), route change (#20)
# ---------------------------------------------------------------------------------------------------------

scenario_sticky() {
	topo_veth
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip1 addr add fd00:aa::1/96 dev veth1
	must ip2 addr add 10.0.0.2/24 dev veth2
	must ip2 addr add fd00:aa::2/96 dev veth2
	must ip1 link set veth1 up
	must ip2 link set veth2 up
	must wait_iface_up "$NS1" veth1
	must wait_iface_up "$NS2" veth2
	must wgc set "$IF1" peer "$pub2" endpoint 10.0.0.2:2
	check "sticky: ping over v4 veth" ping_once "$NS1" 192.168.241.2
	must ip1 addr add 10.0.0.10/24 dev veth1
	must ip1 addr del 10.0.0.1/24 dev veth1
	if supported sticky_v4_source_gone "sticky: ping after the source 10.0.0.1 was replaced by 10.0.0.10" 1; then
		check "sticky: ping after the source 10.0.0.1 was replaced by 10.0.0.10" ping_once "$NS1" 192.168.241.2
	fi
	must wgc set "$IF1" peer "$pub2" endpoint '[fd00:aa::2]:2'
	check "sticky: ping over v6 veth" ping_once "$NS1" 192.168.241.2
	must ip1 addr add fd00:aa::10/96 dev veth1
	must ip1 addr del fd00:aa::1/96 dev veth1
	check "sticky: ping after the source fd00:aa::1 was replaced by fd00:aa::10" ping_once "$NS1" 192.168.241.2
}

scenario_reply_to_sender() {
	topo_veth
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip1 addr add 10.0.0.2/24 dev veth1
	must ip1 addr add fd00:aa::1/96 dev veth1
	must ip1 addr add fd00:aa::2/96 dev veth1
	must ip2 addr add 10.0.0.3/24 dev veth2
	must ip2 addr add fd00:aa::3/96 dev veth2
	must ip1 link set veth1 up
	must ip2 link set veth2 up
	must wait_iface_up "$NS1" veth1
	must wait_iface_up "$NS2" veth2
	local endpoint
	for endpoint in 10.0.0.1:1 '[fd00:aa::1]:1' 10.0.0.2:1 '[fd00:aa::2]:1'; do
		must wgc set "$IF2" peer "$pub1" endpoint "$endpoint"
		check "reply to sender: ping ns2 -> ns1 via $endpoint" ping_once "$NS2" 192.168.241.1
		check "reply to sender: ns1 answered from $endpoint (ns2's endpoint unchanged)" \
			endpoint_is "$IF2" "$pub1" "$endpoint"
	done
	# The destination address belongs to another interface than the one the packet arrives on (#19). The
	# kernel uses a dummy device; this kernel has no dummy module, a veth pair inside ns1 does the same.
	must ip1 link add vdum0 type veth peer name vdum1
	must ip1 addr add 10.50.0.1/24 dev vdum0
	must ip1 link set vdum0 up
	must ip1 link set vdum1 up
	must ip2 route add 10.50.0.0/24 dev veth2
	must wgc set "$IF2" peer "$pub1" endpoint 10.50.0.1:1
	check "other interface: ping ns2 -> ns1 via 10.50.0.1 (an address of another interface)" ping_once "$NS2" 192.168.241.1
	check "other interface: ns1 answered from 10.50.0.1:1" endpoint_is "$IF2" "$pub1" 10.50.0.1:1
}

scenario_route_change() {
	topo_veth
	must ip1 link add veth3 type veth peer name veth4
	must ip1 link set veth4 netns "$NS2"
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip2 addr add 10.0.0.2/24 dev veth2
	must ip1 addr add 10.0.0.3/24 dev veth3
	local dev
	for dev in veth1 veth3; do must ip1 link set "$dev" up; done
	for dev in veth2 veth4; do must ip2 link set "$dev" up; done
	for dev in veth1 veth3; do must wait_iface_up "$NS1" "$dev"; done
	for dev in veth2 veth4; do must wait_iface_up "$NS2" "$dev"; done
	must ip1 route flush dev veth1
	must ip1 route flush dev veth3
	must ip1 route add 10.0.0.0/24 dev veth1 src 10.0.0.1 metric 2
	must wgc set "$IF1" peer "$pub2" endpoint 10.0.0.2:2
	check "route change: ping ns1 -> ns2 via veth1" ping_once "$NS1" 192.168.241.2
	check "route change: ns2 sees ns1 at 10.0.0.1:1" endpoint_is "$IF2" "$pub1" 10.0.0.1:1
	must ip1 route add 10.0.0.0/24 dev veth3 src 10.0.0.3 metric 1
	must sysctl_ns "$NS1" net/ipv4/conf/veth1/rp_filter 0
	must sysctl_ns "$NS2" net/ipv4/conf/veth4/rp_filter 0
	must sysctl_ns "$NS1" net/ipv4/conf/all/rp_filter 0
	must sysctl_ns "$NS2" net/ipv4/conf/all/rp_filter 0
	check "route change: ping ns1 -> ns2 after a better route appeared" ping_once "$NS1" 192.168.241.2
	check "route change: ns2 now sees ns1 at 10.0.0.3:1 (the new route's source)" \
		endpoint_is "$IF2" "$pub1" 10.0.0.3:1
}

# ---------------------------------------------------------------------------------------------------------
# 6h. WireGuard over WireGuard (kernel #10)
# ---------------------------------------------------------------------------------------------------------

scenario_wg_over_wg() {
	topo_loopback
	local W1 W2
	W1=$(ifname c)
	W2=$(ifname d)
	must ip1 addr flush dev "$IF1"
	must ip2 addr flush dev "$IF2"
	must ip1 addr add fd00::5:1/112 dev "$IF1"
	must ip2 addr add fd00::5:2/112 dev "$IF2"
	must wgc set "$IF1" private-key <(echo "$key1") peer "$pub2" preshared-key <(echo "$psk") \
		allowed-ips fd00::5:2/128 endpoint 127.0.0.1:2
	must wgc set "$IF2" private-key <(echo "$key2") listen-port 2 peer "$pub1" preshared-key <(echo "$psk") \
		allowed-ips fd00::5:1/128 endpoint 127.0.0.1:1
	# The inner daemons start in ns1/ns2, so their UDP sockets send through the outer tunnel.
	must start_daemon 1 "$W1" "$NS1"
	must start_daemon 2 "$W2" "$NS2"
	must ip1 addr add 192.168.241.1/24 dev "$W1"
	must ip1 addr add fd00::1/112 dev "$W1"
	must ip2 addr add 192.168.241.2/24 dev "$W2"
	must ip2 addr add fd00::2/112 dev "$W2"
	must ip1 link set mtu 1340 up dev "$W1"
	must ip2 link set mtu 1340 up dev "$W2"
	must wgc set "$W1" listen-port 5 private-key <(echo "$key3") peer "$pub4" \
		allowed-ips 192.168.241.2/32,fd00::2/128 endpoint '[fd00::5:2]:5'
	must wgc set "$W2" listen-port 5 private-key <(echo "$key4") peer "$pub3" \
		allowed-ips 192.168.241.1/32,fd00::1/128 endpoint '[fd00::5:1]:5'
	traffic_tests "wg over wg" light
}

# ---------------------------------------------------------------------------------------------------------
# 6i. Configurations that make split responses (kernel #21), one implementation at a time
# ---------------------------------------------------------------------------------------------------------

split_for() {
	local n=$1 a p count lines bad
	a=$(ifname "S$n")
	p="split responses (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"

	python3 - "$(wg genkey)" "$(wg genkey)" >"$FGT_LOGDIR/big.conf" <<-'EOF'
		import sys
		print("[Interface]\nPrivateKey=%s\n[Peer]\nPublicKey=%s" % (sys.argv[1], sys.argv[2]))
		for a in range(1, 256):
		    for b in range(256):
		        print("AllowedIPs=%d.%d.0.0/16,%d::%d/128" % (a, b, a, b))
	EOF
	check "$p: setconf with one peer and 130560 allowed IPs" wgc setconf "$a" "$FGT_LOGDIR/big.conf"
	count=$(wg show "$a" allowed-ips | wc -w)
	check "$p: ... all 130560 read back" equals tokens "$count" $((255 * 256 * 2 + 1))

	python3 - "$(wg genkey)" >"$FGT_LOGDIR/peers.conf" <<-'EOF'
		import subprocess, sys
		print("[Interface]\nPrivateKey=%s" % sys.argv[1])
		keys = subprocess.run(["sh", "-c", "for i in $(seq 40); do wg genkey; done"], capture_output=True,
		                      text=True, check=True).stdout.split()
		for a, key in enumerate(keys, 1):
		    print("[Peer]\nPublicKey=%s" % key)
		    for b in range(1, 53):
		        print("AllowedIPs=%d.%d.0.0/16" % (a, b))
	EOF
	check "$p: setconf with 40 peers x 52 allowed IPs" wgc setconf "$a" "$FGT_LOGDIR/peers.conf"
	lines=$(wg show "$a" allowed-ips | wc -l)
	bad=$(wg show "$a" allowed-ips | awk 'NF != 53' | wc -l)
	check "$p: ... 40 peers with 52 each" equals lines/bad "$lines/$bad" 40/0

	{
		local i
		for i in {1..29}; do printf '[Peer]\nPublicKey=%s\n' "$(wg genkey)"; done
		printf '[Peer]\nPublicKey=%s\nAllowedIPs=255.2.3.4/32,abcd::255/128\n' "$(wg genkey)"
	} >"$FGT_LOGDIR/empty-peers.conf"
	check "$p: setconf with 29 peers without allowed IPs and one with two" \
		wgc setconf "$a" "$FGT_LOGDIR/empty-peers.conf"
	local conf
	conf=$(wg showconf "$a" 2>&1)
	check "$p: ... showconf lists 30 peers, one with both prefixes" eval \
		'[[ $(grep -c "^\[Peer\]" <<<"$conf") == 30 && $conf == *"AllowedIPs = 255.2.3.4/32, abcd::255/128"* ]]'

	# More peers than one read of the daemon's state takes under its engine lock (1 000 at a time): the
	# listing must still be whole and in insertion order across the chunks.
	python3 - >"$FGT_LOGDIR/many.conf" <<-'EOF'
		import base64, os
		for i in range(2500):
		    print("[Peer]\nPublicKey=%s\nAllowedIPs=10.%d.%d.0/24" % (base64.b64encode(os.urandom(32)).decode(), i >> 8, i & 255))
	EOF
	check "$p: setconf with 2500 peers" wgc setconf "$a" "$FGT_LOGDIR/many.conf"
	local want got
	want=$(awk '/^PublicKey=/ { sub(/^PublicKey=/, ""); print }' "$FGT_LOGDIR/many.conf")
	got=$(wg show "$a" peers)
	if supported peer_order "$p: 2500 peers listed whole, in insertion order" "$n"; then
		check "$p: 2500 peers listed whole, in insertion order" equals peers "$(md5sum <<<"$got")" "$(md5sum <<<"$want")"
	fi
	check "$p: ... each with its /24" equals allowed-ips "$(wg show "$a" allowed-ips | awk 'NF == 2' | wc -l)" 2500

	must wgc setconf "$a" /dev/null
	local ips
	ips=$(printf 'abcd::%x,' {1..197})
	must wgc set "$a" peer "$pub1"
	must wgc set "$a" peer "$pub2" allowed-ips "${ips%,}"
	local listing first second
	listing=$(wg show "$a" allowed-ips)
	first=$(awk -v k="$pub1" '$1 == k' <<<"$listing")
	second=$(awk -v k="$pub2" '$1 == k' <<<"$listing")
	check "$p: a peer without allowed IPs reads (none)" equals first "$first" "$pub1"$'\t'"(none)"
	check "$p: the other has its 197 v6 /128s" equals second-count "$(wc -w <<<"$second")" 198
	if supported peer_order "$p: peers listed in insertion order" "$n"; then
		check "$p: peers listed in insertion order" equals order "$(cut -f1 <<<"$listing")" "$pub1"$'\n'"$pub2"
	fi
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_split_responses() {
	no_single_targets "split responses" && return
	make_namespaces
	local n
	for n in $(single_targets); do split_for "$n"; done
}

# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------

list_scenarios() { declare -F | awk '$3 ~ /^scenario_/ { sub(/^scenario_/, "", $3); print $3 }'; }

main() {
	if [[ ${1:-} == --list ]]; then
		list_scenarios
		exit 0
	fi
	local scenario=${1:-}
	if [[ -z $scenario ]] || ! declare -F "scenario_$scenario" >/dev/null; then
		echo "usage: $0 SCENARIO | --list   (scenarios: $(list_scenarios | tr '\n' ' '))" >&2
		exit 2
	fi
	if [[ $EUID != 0 ]]; then
		echo "$0: must run as root (network namespaces)" >&2
		exit 2
	fi
	if [[ -n ${FGT_RESULTS:-} ]]; then exec 5>>"$FGT_RESULTS"; else exec 5>&1; fi
	exec 1>&2
	local default_impl=${FERROGUARD:-$(cd "$HERE/../.." && pwd)/target/release/ferroguard}
	WG_IMPL1=${WG_IMPL1:-$default_impl}
	WG_IMPL2=${WG_IMPL2:-$default_impl}
	if [[ -z ${FGT_SINGLE_TARGETS+set} ]]; then
		FGT_SINGLE_TARGETS="1 2"
		[[ $WG_IMPL1 == "$WG_IMPL2" ]] && FGT_SINGLE_TARGETS=1
	fi
	if [[ -z ${FGT_LOGDIR:-} ]]; then
		FGT_LOGDIR=$(mktemp -d /tmp/fgt-netns-XXXXXX)
		FGT_OWN_LOGDIR=1
	fi
	mkdir -p "$FGT_LOGDIR"
	FGT_SCENARIO=$scenario
	# The id may come as a second argument (run.sh passes it so that leftovers can be told from live runs).
	FGT_ID=${2:-${FGT_ID:-}}
	fgt_init_names
	trap fgt_cleanup EXIT
	trap 'exit 143' TERM
	trap 'exit 130' INT
	trap 'exit 129' HUP
	fgt_log "scenario $scenario: impl1='$WG_IMPL1' impl2='$WG_IMPL2' id $FGT_ID logs $FGT_LOGDIR"
	make_keys || fgt_abort "wg genkey/pubkey failed"
	"scenario_$scenario"
	# Every scenario ends the way a user would: SIGTERM, after which nothing may be left.
	if daemons_running; then
		check "${scenario//_/ }: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
	fi
	exit "$FGT_FAILED"
}

main "$@"
