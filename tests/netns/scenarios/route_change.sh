#!/bin/bash
# Scenario "route_change" (kernel #20): a better route with another source appears (topo_veth, lib.sh).

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
