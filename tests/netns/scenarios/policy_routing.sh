#!/bin/bash
# Scenario "policy_routing" (kernel #15): wg-quick style policy routing with fwmark 51820 (topo_nat,
# lib.sh).

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
