#!/bin/bash
# Scenario "key_change" (kernel #9): key change and immediate handshake.

scenario_key_change() {
	topo_loopback
	must wgc set "$IF1" private-key <(echo "$key1") peer "$pub2" preshared-key <(echo "$psk") \
		allowed-ips 192.168.241.2/32 endpoint 127.0.0.1:2
	must wgc set "$IF2" private-key <(echo "$key2") listen-port 2 peer "$pub1" preshared-key <(echo "$psk") \
		allowed-ips 192.168.241.1/32
	check "key change: ping ns1 -> ns2 with the first key" ping_once "$NS1" 192.168.241.2
	must wgc set "$IF1" private-key <(echo "$key3")
	must wgc set "$IF2" peer "$pub3" preshared-key <(echo "$psk") allowed-ips 192.168.241.1/32 peer "$pub1" remove
	check "key change: ping ns1 -> ns2 right after the change (new handshake)" ping_once "$NS1" 192.168.241.2
	check "key change: ns2 has exactly the new peer" equals peers "$(wg_field "$IF2" peers)" "$pub3"
	local ts
	read -r _ ts < <(wg show "$IF2" latest-handshakes)
	check "key change: handshake with the new key recorded" test "${ts:-0}" -ne 0
	check "key change: ping ns2 -> ns1 over the new session" ping_once "$NS2" 192.168.241.1
}
