#!/bin/bash
# Scenario "uapi" (§2 of the reference): UAPI conformance, driven by the real wg(8), one implementation
# at a time.

# uapi_dump_ok IFNAME PUBLIC_KEY: "wg show all dump" has a 5-field line for IFNAME and 9-field peer lines with the
# values set by uapi_for.
uapi_dump_ok() {
	local ifname=$1 public=$2 lines iface_line peer2 peer3
	lines=$(wg show all dump 2>&1 | awk -v n="$ifname" -F'\t' '$1 == n')
	fgt_log "$lines"
	iface_line=$(awk -F'\t' 'NR == 1' <<<"$lines")
	peer2=$(awk -F'\t' -v k="$pub2" '$2 == k' <<<"$lines")
	peer3=$(awk -F'\t' -v k="$pub3" '$2 == k' <<<"$lines")
	local expect_if="$ifname"$'\t'"$key1"$'\t'"$public"$'\t'51820$'\t'0x1234
	equals "dump interface line" "$iface_line" "$expect_if" || return 1
	[[ $(wc -l <<<"$lines") == 3 ]] || { fgt_log "expected 3 lines"; return 1; }
	# Fields: iface pub psk endpoint allowed-ips latest-handshake rx tx keepalive (tx may count initiations
	# sent because of the keepalive).
	[[ $peer2 =~ ^$ifname$'\t'"$pub2"$'\t'"$psk"$'\t'127\.0\.0\.1:2$'\t'10\.0\.0\.0/24,fd00::/64$'\t'0$'\t'0$'\t'[0-9]+$'\t'25$ ]] ||
		{ fgt_log "peer 2 line unexpected"; return 1; }
	equals "dump peer 3" "$peer3" \
		"$ifname"$'\t'"$pub3"$'\t'"(none)"$'\t''[fd00::9]:51820'$'\t'10.1.0.1/32$'\t'0$'\t'0$'\t'0$'\t'off
}

# uapi_port_held_refused IFNAME PORT: with PORT taken by another socket in ns0, "wg set listen-port" must fail with
# "Address already in use".
uapi_port_held_refused() {
	local ready pid out rc
	ready=$(mktemp -u "$FGT_LOGDIR/hold-XXXXXX")
	in_ns "$NS0" timeout --foreground 30 python3 "$FGT_NET_PY" udp-hold 0.0.0.0 "$2" "$ready" &
	pid=$!
	FGT_PIDS+=("$pid")
	wait_ready_file "$ready" "$pid" "port holder"  # not fatal: the refusal checked below fails without it
	out=$(wg set "$1" listen-port "$2" 2>&1)
	rc=$?
	kill_pids "$pid"
	wait "$pid" 2>/dev/null
	fgt_log "wg set listen-port $2: status $rc: $out"
	((rc != 0)) && [[ $out == *"Address already in use"* ]]
}

uapi_for() {
	local n=$1 a b p public conf expected
	a=$(ifname "U$n")
	b=$(ifname "V$n")
	p="uapi (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"
	# The copy lives in another namespace so that its listen port cannot collide.
	must start_daemon "$n" "$b" "$NS1"
	public=$(wg pubkey <<<"$key1")
	# Multi-peer listings are compared in order only where the implementation keeps the insertion order
	# (that order is then checked on its own, below).
	local cmp=equals
	[[ -z $(unsupported_reason "$(impl_kind "$n")" peer_order) ]] || cmp=equals_sorted

	check "$p: wg set with device and peer settings" wgc set "$a" listen-port 51820 fwmark 0x1234 \
		private-key <(echo "$key1") \
		peer "$pub2" preshared-key <(echo "$psk") endpoint 127.0.0.1:2 persistent-keepalive 25 \
		allowed-ips 10.0.0.0/24,fd00::/64 \
		peer "$pub3" endpoint '[fd00::9]:51820' allowed-ips 10.1.0.1/32
	expected=$(printf '%s\n' "[Interface]" "ListenPort = 51820" "FwMark = 0x1234" "PrivateKey = $key1" "" \
		"[Peer]" "PublicKey = $pub2" "PresharedKey = $psk" "AllowedIPs = 10.0.0.0/24, fd00::/64" \
		"Endpoint = 127.0.0.1:2" "PersistentKeepalive = 25" "" \
		"[Peer]" "PublicKey = $pub3" "AllowedIPs = 10.1.0.1/32" "Endpoint = [fd00::9]:51820")
	conf=$(wg showconf "$a" 2>&1)
	check "$p: wg showconf gives back exactly what was set" "$cmp" showconf "$conf" "$expected"
	check "$p: wg show public-key is derived from the private key" equals public-key "$(wg_field "$a" public-key)" "$public"
	check "$p: wg show all dump fields" uapi_dump_ok "$a" "$public"
	check "$p: wg show endpoints (v4 and bracketed v6)" "$cmp" endpoints "$(wg_field "$a" endpoints)" \
		"$pub2"$'\t'127.0.0.1:2$'\n'"$pub3"$'\t''[fd00::9]:51820'
	check "$p: wg show persistent-keepalive" "$cmp" keepalive "$(wg_field "$a" persistent-keepalive)" \
		"$pub2"$'\t'25$'\n'"$pub3"$'\t'off

	printf '%s\n' "$conf" >"$FGT_LOGDIR/showconf-$a.conf"
	check "$p: wg setconf of that showconf output on a second interface" \
		wgc setconf "$b" "$FGT_LOGDIR/showconf-$a.conf"
	check "$p: ... and its showconf is identical (round trip)" "$cmp" round-trip "$(wg showconf "$b" 2>&1)" "$conf"

	must wgc set "$a" peer "$pub2" allowed-ips 10.9.0.0/16
	check "$p: wg set allowed-ips replaces the peer's list" "$cmp" allowed-ips "$(wg_field "$a" allowed-ips)" \
		"$pub2"$'\t'10.9.0.0/16$'\n'"$pub3"$'\t'10.1.0.1/32
	must wgc set "$a" peer "$pub3" remove
	check "$p: wg set peer remove" equals peers "$(wg_field "$a" peers)" "$pub2"
	must wgc set "$a" fwmark 0 peer "$pub2" persistent-keepalive 0 preshared-key /dev/null
	check "$p: fwmark 0 reads back as off" equals fwmark "$(wg_field "$a" fwmark)" off
	check "$p: persistent-keepalive 0 reads back as off" equals keepalive \
		"$(wg_field "$a" persistent-keepalive)" "$pub2"$'\t'off
	check "$p: preshared-key /dev/null reads back as (none)" equals psk \
		"$(wg_field "$a" preshared-keys)" "$pub2"$'\t'"(none)"
	must wgc set "$a" private-key /dev/null
	check "$p: private-key /dev/null: no private key" equals private-key "$(wg_field "$a" private-key)" "(none)"
	check "$p: private-key /dev/null: no public key" equals public-key "$(wg_field "$a" public-key)" "(none)"

	printf '%s\n' "[Peer]" "PublicKey = $pub4" "AllowedIPs = 10.4.0.0/16" >"$FGT_LOGDIR/addconf.conf"
	check "$p: wg addconf adds a peer" wgc addconf "$a" "$FGT_LOGDIR/addconf.conf"
	check "$p: ... both peers listed" equals_sorted peers "$(wg_field "$a" peers)" "$pub2"$'\n'"$pub4"
	if supported peer_order "$p: ... the new one after the existing one (insertion order)" "$n"; then
		check "$p: ... the new one after the existing one (insertion order)" equals peers \
			"$(wg_field "$a" peers)" "$pub2"$'\n'"$pub4"
	fi

	printf '%s\n' "[Interface]" "PrivateKey = $key1" "ListenPort = 51821" "" "[Peer]" "PublicKey = $pub4" \
		"AllowedIPs = 10.44.0.0/16" "" "[Peer]" "PublicKey = $pub3" "AllowedIPs = 10.3.0.0/16" \
		>"$FGT_LOGDIR/syncconf.conf"
	check "$p: wg syncconf" wgc syncconf "$a" "$FGT_LOGDIR/syncconf.conf"
	check "$p: ... removes the vanished peer, updates and adds" equals_sorted allowed-ips \
		"$(wg_field "$a" allowed-ips)" "$pub4"$'\t'10.44.0.0/16$'\n'"$pub3"$'\t'10.3.0.0/16
	check "$p: ... sets the listen port and the private key" equals port+key \
		"$(wg_field "$a" listen-port) $(wg_field "$a" private-key)" "51821 $key1"

	printf '%s\n' "[Interface]" "PrivateKey = $key2" "" "[Peer]" "PublicKey = $pub1" "AllowedIPs = 10.1.1.1/32" \
		>"$FGT_LOGDIR/setconf.conf"
	check "$p: wg setconf replaces the whole configuration" wgc setconf "$a" "$FGT_LOGDIR/setconf.conf"
	check "$p: ... peers" equals allowed-ips "$(wg_field "$a" allowed-ips)" "$pub1"$'\t'10.1.1.1/32
	check "$p: ... private key" equals private-key "$(wg_field "$a" private-key)" "$key2"

	must wgc set "$a" listen-port 51822
	check "$p: listen-port on a port taken by another socket fails with EADDRINUSE" uapi_port_held_refused "$a" 40002
	if supported keeps_port_on_bind_error "$p: the daemon keeps its previous port after that" "$n"; then
		check "$p: the daemon keeps its previous port after that" equals listen-port \
			"$(wg_field "$a" listen-port)" 51822
	fi
	check "$p: unknown interface: wg show fails" eval '! wg show "$(ifname nx)" &>/dev/null'
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_uapi() {
	no_single_targets "uapi" && return
	make_namespaces
	local n
	for n in $(single_targets); do uapi_for "$n"; done
}
