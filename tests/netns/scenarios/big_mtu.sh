#!/bin/bash
# Scenario "big_mtu" (kernel #3, #4): big MTU and IPv6 as the outer transport.

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
