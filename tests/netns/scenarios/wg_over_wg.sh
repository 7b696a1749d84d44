#!/bin/bash
# Scenario "wg_over_wg" (kernel #10): WireGuard over WireGuard.

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
