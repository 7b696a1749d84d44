#!/bin/bash
# Scenario "nat_keepalive" (kernel #12): NAT + persistent keepalive (topo_nat, lib.sh).

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
