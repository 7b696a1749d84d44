#!/bin/bash
# The scenarios of the Ferroguard network-namespace test suite.
#
#   netns.sh SCENARIO        run one scenario (normally called by run.sh, which numbers the results)
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

# NAT topology of the kernel script (daemons in ns1/ns2, their sockets there; ns0 routes and SNATs):
#   ns1: IF1 192.168.241.1, vethc 192.168.1.100 -> ns0: vethrc 192.168.1.1 | vethrs 10.0.0.1 -> ns2: veths
#   10.0.0.100, IF2 192.168.241.2
topo_nat() {
	make_namespaces
	must start_daemon 1 "$IF1" "$NS1"
	must start_daemon 2 "$IF2" "$NS2"
	configure_peers
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
		name+=" rx $want_rx, tx $want_tx (exact)"
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
	fgt_init_names
	trap fgt_cleanup EXIT
	trap 'exit 143' TERM
	trap 'exit 130' INT
	trap 'exit 129' HUP
	fgt_log "scenario $scenario: impl1='$WG_IMPL1' impl2='$WG_IMPL2' id $FGT_ID logs $FGT_LOGDIR"
	make_keys || fgt_abort "wg genkey/pubkey failed"
	"scenario_$scenario"
	exit "$FGT_FAILED"
}

main "$@"
