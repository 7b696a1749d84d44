# shellcheck shell=bash
# shellcheck disable=SC2154 # key1..key4, pub1..pub4 and psk are set by make_keys (lib.sh)
# Scenario network_change: a client behind NAT whose public address and port both change, with the old NAT
# mapping gone, and SIGUSR1 ("the network changed", Device::network_changed).
#
#   ns1 (client IF1, 10.0.1.1) -- ns0 (router: masquerade to its address on 10.0.2.0/24) -- ns2 (server IF2,
#   10.0.2.2, no Endpoint for the client: it learns it from the client's packets)
#
#   1. the client pings the server (handshake); the server then reaches the client through the mapping;
#   2. a change: the router's outside address goes from 10.0.2.1 to 10.0.2.3, the client's listen port
#      changes, and the old mapping is gone (the router drops what still arrives for it). The server keeps
#      pinging the client; nothing gets through until the client's new-handshake timer fires (armed by
#      its last reply: KEEPALIVE_TIMEOUT + REKEY_TIMEOUT = 15 s): at least 10 s, the figure is noted;
#   3. another change (10.0.2.4, another port) followed at once by SIGUSR1 to the client's daemon: the
#      server's pings get answers again within 3 s (one round trip and one handshake; the figure is
#      noted), and the server's endpoint for the client is the new address and port.
# Ferroguard only (SIGUSR1 is its own); the server is the pair's other implementation.

# nc_router: the three namespaces, the veths, and masquerading in ns0.
nc_router() {
	make_namespaces
	must ip0 link add c0 type veth peer name c1 netns "$NS1"
	must ip0 link add s0 type veth peer name s2 netns "$NS2"
	must ip1 addr add 10.0.1.1/24 dev c1
	must ip0 addr add 10.0.1.254/24 dev c0
	must ip0 addr add 10.0.2.1/24 dev s0
	must ip2 addr add 10.0.2.2/24 dev s2
	for dev in c0 s0; do must ip0 link set "$dev" up; done
	must ip1 link set c1 up
	must ip2 link set s2 up
	must ip1 route add default via 10.0.1.254
	must sysctl_ns "$NS0" net/ipv4/ip_forward 1
	must sysctl_ns "$NS0" net/ipv4/conf/s0/promote_secondaries 1
	must n0 nft add table ip fgnat
	must n0 nft add chain ip fgnat post '{ type nat hook postrouting priority 100; }'
	must n0 nft add rule ip fgnat post oifname s0 masquerade
	must n0 nft add chain ip fgnat fgfwd '{ type filter hook forward priority 0; }'
	must wait_iface_up "$NS1" c1
	must wait_iface_up "$NS2" s2
}

# nc_move OLD NEW PORT: the router's outside address goes from 10.0.2.OLD to 10.0.2.NEW and the client's
# listen port from what it was to PORT; the router drops whatever still arrives for the old port (a conntrack
# entry of the old mapping may outlive the address).
nc_move() {
	local old_port
	old_port=$(wg show "$IF1" listen-port)
	must ip0 addr add "10.0.2.$2/24" dev s0
	must ip0 addr del "10.0.2.$1/24" dev s0
	must n0 nft add rule ip fgnat fgfwd oifname c0 udp dport "$old_port" drop
	must wgc set "$IF1" listen-port "$3"
}

# nc_replies NS DEST SECONDS: true if DEST answers a ping within SECONDS (one ping a second); prints the
# seconds it took.
nc_replies() {
	local ns=$1 dest=$2 limit=$3 start now
	start=$(date +%s%N)
	while :; do
		if ip netns exec "$ns" ping -n -q -c 1 -W 1 "$dest" >/dev/null 2>&1; then
			now=$(date +%s%N)
			printf '%d.%03d' $(((now - start) / 1000000000)) $(((now - start) / 1000000 % 1000))
			return 0
		fi
		now=$(date +%s%N)
		(((now - start) / 1000000000 >= limit)) && return 1
	done
}

# nc_endpoint_is IFNAME ENDPOINT: the interface's one peer has this endpoint.
nc_endpoint_is() { equals endpoint "$(wg show "$1" endpoints | awk '{ print $2 }')" "$2"; }

scenario_network_change() {
	local took
	if [[ $(impl_kind 1) != ferroguard ]]; then
		skip "network_change" "SIGUSR1 is Ferroguard's own (the client is implementation 1)"
		return
	fi
	nc_router
	must start_daemon 1 "$IF1" "$NS1"
	must start_daemon 2 "$IF2" "$NS2"
	configure_peers
	must wgc set "$IF1" peer "$pub2" endpoint 10.0.2.2:2
	check "network_change: the client reaches the server through the NAT" ping_retry "$NS1" 192.168.241.2
	check "network_change: the server reaches the client through the mapping" ping_once "$NS2" 192.168.241.1
	check "network_change: the server sees the client at the router's address" nc_endpoint_is "$IF2" 10.0.2.1:1

	# Without a signal: only the client's new-handshake timer (armed by its last reply, KEEPALIVE_TIMEOUT
	# + REKEY_TIMEOUT = 15 s) brings the server's traffic back.
	nc_move 1 3 11
	if took=$(nc_replies "$NS2" 192.168.241.1 20); then
		note "without a signal: answered ${took} s after the change"
		check "network_change: without a signal, the timers alone take at least KEEPALIVE_TIMEOUT" \
			eval '((${took%.*} >= 10))'
	else
		fail "network_change: without a signal, the timers bring the traffic back within 20 s"
	fi

	# With SIGUSR1 right after the change: back after one round trip and one handshake.
	nc_move 3 4 12
	kill -USR1 "${FGT_DAEMON_PID[$IF1]}"
	if took=$(nc_replies "$NS2" 192.168.241.1 3); then
		pass "network_change: after SIGUSR1 the server's pings are answered again within 3 s"
		note "with SIGUSR1: answered ${took} s after the change"
	else
		fail "network_change: after SIGUSR1 the server's pings are answered again within 3 s"
	fi
	check "network_change: the server now sees the client's new address and port" \
		nc_endpoint_is "$IF2" 10.0.2.4:12
	check "network_change: daemons exit on SIGTERM" stop_all_daemons
}
