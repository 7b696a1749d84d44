#!/bin/bash
# Scenario "reply_to_sender" (kernel #18, #19): the reply leaves from the address the request came to, also
# when that address belongs to another interface (topo_veth, lib.sh).

scenario_reply_to_sender() {
	topo_veth
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip1 addr add 10.0.0.2/24 dev veth1
	must ip1 addr add fd00:aa::1/96 dev veth1
	must ip1 addr add fd00:aa::2/96 dev veth1
	must ip2 addr add 10.0.0.3/24 dev veth2
	must ip2 addr add fd00:aa::3/96 dev veth2
	veths_up
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
