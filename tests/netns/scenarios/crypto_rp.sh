#!/bin/bash
# Scenario "crypto_rp" (kernel #8): crypto-RP filter. The source of a decrypted packet must route back
# (longest prefix over the whole device) to the peer it came from -- and the endpoint is learned before that
# check.

# crypto_rp_probe NAME LISTEN_NS LISTEN_ADDR SEND_NS EXPECTED_COUNT SECONDS: one datagram from SEND_NS to
# LISTEN_ADDR:1111 must arrive EXPECTED_COUNT times (0 or 1) while a listener in LISTEN_NS waits up to SECONDS.
crypto_rp_probe() {
	local name=$1
	if ! udp_listen_start "$2" "$3" 1111 "$6" "$([[ $5 == 0 ]] && echo 0 || echo 1)"; then
		fail "$name" "UDP listener did not start"
		return
	fi
	udp_send "$4" "$3" 1111 X
	udp_listen_result
	if [[ $UDP_RECEIVED == "$5" ]]; then
		pass "$name"
	else
		fail "$name" "received $UDP_RECEIVED datagram(s), expected $5"
	fi
}

scenario_crypto_rp() {
	topo_loopback
	endpoints_v6
	check "crypto-RP: session up (ns2 -> ns1)" ping_all "$NS2" 192.168.241.1 3
	must wgc set "$IF1" peer "$pub2" allowed-ips 192.168.241.0/24
	crypto_rp_probe "crypto-RP: UDP from ns2 arrives while 192.168.241.0/24 belongs to ns2's peer" \
		"$NS1" 192.168.241.1 "$NS2" 1 2
	local more_specific
	more_specific=$(wg genkey | wg pubkey)
	must wgc set "$IF1" peer "$more_specific" allowed-ips 192.168.241.2/32
	must wgc set "$IF2" listen-port 9997
	crypto_rp_probe "crypto-RP: UDP from ns2 dropped once a more specific /32 belongs to another peer" \
		"$NS1" 192.168.241.1 "$NS2" 0 1.5
	must wgc set "$IF1" peer "$more_specific" remove
	check "crypto-RP: the dropped packet still taught ns1 the new endpoint [::1]:9997" \
		endpoint_is "$IF1" "$pub2" '[::1]:9997'
	crypto_rp_probe "crypto-RP: UDP from ns2 arrives again after that peer is removed" \
		"$NS1" 192.168.241.1 "$NS2" 1 2
}
