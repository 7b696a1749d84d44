#!/bin/bash
# Scenario "keys": "wg show doesnotexist" (kernel #22) and key edge cases (kernel #23), one
# implementation at a time.

keys_for() {
	local n=$1 a p
	a=$(ifname "K$n")
	p="keys (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"
	must wgc set "$a" private-key <(echo "$key1") peer "$pub2" preshared-key <(echo "$psk")
	check "$p: private key reads back" equals private-key "$(wg_field "$a" private-key)" "$key1"
	check "$p: preshared key reads back" equals psk "$(wg_field "$a" preshared-keys)" "$pub2"$'\t'"$psk"
	must wgc set "$a" private-key /dev/null peer "$pub2" preshared-key /dev/null
	check "$p: /dev/null clears the private key" equals private-key "$(wg_field "$a" private-key)" "(none)"
	check "$p: /dev/null clears the preshared key" equals psk "$(wg_field "$a" preshared-keys)" "$pub2"$'\t'"(none)"
	must wgc set "$a" peer "$pub2"
	must wgc set "$a" private-key <(echo "$key2")
	check "$p: taking a peer's key as our own: public key" equals public-key "$(wg_field "$a" public-key)" "$pub2"
	check "$p: ... removes that peer" equals peers "$(wg_field "$a" peers)" ""
	must wgc set "$a" peer "$pub2"
	check "$p: ... and adding it back is ignored" equals peers "$(wg_field "$a" peers)" ""
	must wgc set "$a" private-key <(echo "$key1")
	must wgc set "$a" peer "$pub2"
	check "$p: with another private key it can be added" equals peers "$(wg_field "$a" peers)" "$pub2"
	must wgc set "$a" private-key <(echo "/${key1:1}")
	check "$p: private key is clamped (/... reads back +...)" equals private-key \
		"$(wg_field "$a" private-key)" "+${key1:1}"
	must wgc set "$a" peer "$pub2" allowed-ips 0.0.0.0/0,10.0.0.0/8,100.0.0.0/10,172.16.0.0/12,192.168.0.0/16
	must wgc set "$a" peer "$pub2" allowed-ips 0.0.0.0/0
	check "$p: 0.0.0.0/0 replaces nested v4 prefixes" equals allowed-ips "$(wg_field "$a" allowed-ips)" \
		"$pub2"$'\t'0.0.0.0/0
	must wgc set "$a" peer "$pub2" allowed-ips ::/0,1700::/111,5000::/4,e000::/37,9000::/75
	must wgc set "$a" peer "$pub2" allowed-ips ::/0
	check "$p: ::/0 replaces nested v6 prefixes" equals allowed-ips "$(wg_field "$a" allowed-ips)" "$pub2"$'\t'::/0
	must wgc set "$a" peer "$pub2" allowed-ips 192.95.5.93/27,abcd::1234/100
	check "$p: host bits are masked" equals allowed-ips "$(wg_field "$a" allowed-ips)" \
		"$pub2"$'\t'"192.95.5.64/27 abcd::/100"
	must wgc set "$a" peer "$pub2" remove
	check "$p: peer removed" equals peers "$(wg_field "$a" peers)" ""
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_keys() {
	check "wg show doesnotexist fails" eval '! wg show doesnotexist &>/dev/null'
	no_single_targets "keys" && return
	make_namespaces
	local n
	for n in $(single_targets); do keys_for "$n"; done
}
