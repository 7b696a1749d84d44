#!/bin/bash
# Scenario "sticky" (kernel #17): sticky but not too sticky: the local source address of the endpoint's
# route is replaced (topo_veth, lib.sh).

scenario_sticky() {
	topo_veth
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip1 addr add fd00:aa::1/96 dev veth1
	must ip2 addr add 10.0.0.2/24 dev veth2
	must ip2 addr add fd00:aa::2/96 dev veth2
	veths_up
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
