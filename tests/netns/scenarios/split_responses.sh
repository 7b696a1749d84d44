#!/bin/bash
# Scenario "split_responses" (kernel #21): configurations that make split responses, one implementation
# at a time.

split_responses_for() {
	local n=$1 a p count lines bad
	a=$(ifname "S$n")
	p="split responses (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"

	python3 - "$(wg genkey)" "$(wg genkey)" >"$FGT_LOGDIR/big.conf" <<-'EOF'
		import sys
		print("[Interface]\nPrivateKey=%s\n[Peer]\nPublicKey=%s" % (sys.argv[1], sys.argv[2]))
		for a in range(1, 256):
		    for b in range(256):
		        print("AllowedIPs=%d.%d.0.0/16,%d::%d/128" % (a, b, a, b))
	EOF
	check "$p: setconf with one peer and 130560 allowed IPs" wgc setconf "$a" "$FGT_LOGDIR/big.conf"
	count=$(wg show "$a" allowed-ips | wc -w)
	check "$p: ... all 130560 read back" equals tokens "$count" $((255 * 256 * 2 + 1))

	python3 - "$(wg genkey)" >"$FGT_LOGDIR/peers.conf" <<-'EOF'
		import subprocess, sys
		print("[Interface]\nPrivateKey=%s" % sys.argv[1])
		keys = subprocess.run(["sh", "-c", "for i in $(seq 40); do wg genkey; done"], capture_output=True,
		                      text=True, check=True).stdout.split()
		for a, key in enumerate(keys, 1):
		    print("[Peer]\nPublicKey=%s" % key)
		    for b in range(1, 53):
		        print("AllowedIPs=%d.%d.0.0/16" % (a, b))
	EOF
	check "$p: setconf with 40 peers x 52 allowed IPs" wgc setconf "$a" "$FGT_LOGDIR/peers.conf"
	lines=$(wg show "$a" allowed-ips | wc -l)
	bad=$(wg show "$a" allowed-ips | awk 'NF != 53' | wc -l)
	check "$p: ... 40 peers with 52 each" equals lines/bad "$lines/$bad" 40/0

	{
		local i
		for i in {1..29}; do printf '[Peer]\nPublicKey=%s\n' "$(wg genkey)"; done
		printf '[Peer]\nPublicKey=%s\nAllowedIPs=255.2.3.4/32,abcd::255/128\n' "$(wg genkey)"
	} >"$FGT_LOGDIR/empty-peers.conf"
	check "$p: setconf with 29 peers without allowed IPs and one with two" \
		wgc setconf "$a" "$FGT_LOGDIR/empty-peers.conf"
	local conf
	conf=$(wg showconf "$a" 2>&1)
	check "$p: ... showconf lists 30 peers, one with both prefixes" eval \
		'[[ $(grep -c "^\[Peer\]" <<<"$conf") == 30 && $conf == *"AllowedIPs = 255.2.3.4/32, abcd::255/128"* ]]'

	# More peers than one read of the daemon's state takes under its engine lock (1 000 at a time): the
	# listing must still be whole and in insertion order across the chunks.
	python3 - >"$FGT_LOGDIR/many.conf" <<-'EOF'
		import base64, os
		for i in range(2500):
		    print("[Peer]\nPublicKey=%s\nAllowedIPs=10.%d.%d.0/24" % (base64.b64encode(os.urandom(32)).decode(), i >> 8, i & 255))
	EOF
	check "$p: setconf with 2500 peers" wgc setconf "$a" "$FGT_LOGDIR/many.conf"
	local want got
	want=$(awk '/^PublicKey=/ { sub(/^PublicKey=/, ""); print }' "$FGT_LOGDIR/many.conf")
	got=$(wg show "$a" peers)
	if supported peer_order "$p: 2500 peers listed whole, in insertion order" "$n"; then
		check "$p: 2500 peers listed whole, in insertion order" equals peers "$(md5sum <<<"$got")" "$(md5sum <<<"$want")"
	fi
	check "$p: ... each with its /24" equals allowed-ips "$(wg show "$a" allowed-ips | awk 'NF == 2' | wc -l)" 2500

	must wgc setconf "$a" /dev/null
	local ips
	ips=$(printf 'abcd::%x,' {1..197})
	must wgc set "$a" peer "$pub1"
	must wgc set "$a" peer "$pub2" allowed-ips "${ips%,}"
	local listing first second
	listing=$(wg show "$a" allowed-ips)
	first=$(awk -v k="$pub1" '$1 == k' <<<"$listing")
	second=$(awk -v k="$pub2" '$1 == k' <<<"$listing")
	check "$p: a peer without allowed IPs reads (none)" equals first "$first" "$pub1"$'\t'"(none)"
	check "$p: the other has its 197 v6 /128s" equals second-count "$(wc -w <<<"$second")" 198
	if supported peer_order "$p: peers listed in insertion order" "$n"; then
		check "$p: peers listed in insertion order" equals order "$(cut -f1 <<<"$listing")" "$pub1"$'\n'"$pub2"
	fi
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_split_responses() {
	no_single_targets "split responses" && return
	make_namespaces
	local n
	for n in $(single_targets); do split_responses_for "$n"; done
}
