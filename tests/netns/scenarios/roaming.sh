#!/bin/bash
# Scenario "roaming" (kernel #6, #7): the peer follows a new source address and port, v4 and v6.

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
