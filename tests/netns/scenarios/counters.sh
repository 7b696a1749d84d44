#!/bin/bash
# Scenario "counters" (kernel #1): byte counters and handshake timestamps right after the first
# handshake (kernel: right after configuration, before tests()).

# counters_check SIDE KIND RX TX RXSET TXSET: exact for ferroguard, the ranges of wireguard-go's netns.sh else.
counters_check() {
	local side=$1 n=$2 rx=$3 tx=$4 want_rx=$5 want_tx=$6 name
	name="counters: $side: wg show transfer"
	if [[ $(impl_kind "$n") == ferroguard ]]; then
		name+=" rx ${want_rx//|/ or }, tx ${want_tx//|/ or } (exact)"
		if [[ " ${want_rx//|/ } " == *" $rx "* && " ${want_tx//|/ } " == *" $tx "* ]]; then
			pass "$name"
		else
			fail "$name" "got rx $rx tx $tx"
		fi
	else
		name+=" within 840..2499 (wireguard-go ranges)"
		if ((rx >= 840 && rx < 2500 && tx >= 840 && tx < 2500)); then
			pass "$name"
		else
			fail "$name" "got rx $rx tx $tx"
		fi
	fi
}

scenario_counters() {
	topo_loopback
	endpoints_v4
	check "counters: 10 flood pings ns2 -> ns1, all answered" ping_all "$NS2" 192.168.241.1 10
	local rx1 tx1 rx2 tx2 ts1 ts2 lines
	read -r _ rx2 tx2 < <(wg show "$IF2" transfer)
	read -r _ rx1 tx1 < <(wg show "$IF1" transfer)
	note "ns2 (initiator): rx ${rx2:-?} tx ${tx2:-?}; ns1 (responder): rx ${rx1:-?} tx ${tx1:-?}"
	# Initiator: 92-byte response + 10 replies of 84 bytes padded to 96 (+32 header/tag) = 1372 received;
	# 148-byte initiation + 10 requests = 1428 sent, 1460 if a keepalive followed the handshake.
	counters_check "ns2 (initiator)" 2 "${rx2:-0}" "${tx2:-0}" 1372 "1428|1460"
	counters_check "ns1 (responder)" 1 "${rx1:-0}" "${tx1:-0}" "1428|1460" 1372
	read -r _ ts1 < <(wg show "$IF1" latest-handshakes)
	read -r _ ts2 < <(wg show "$IF2" latest-handshakes)
	check "counters: latest-handshakes non-zero on ns1" test "${ts1:-0}" -ne 0
	check "counters: latest-handshakes non-zero on ns2" test "${ts2:-0}" -ne 0
	check "counters: latest-handshake is the wall clock (within 10 s)" \
		test $((${ts2:-0} - $(date +%s))) -gt -10 -a $((${ts2:-0} - $(date +%s))) -lt 10
	# The TUN counts inner packets: 10 echo requests of 84 bytes went in on ns2, 10 replies came out.
	lines=$(ip -n "$NS2" -stats link show dev "$IF2")
	fgt_log "$lines"
	local rxb txb
	{ read -r _; read -r _; read -r _; read -r rxb _; read -r _; read -r txb _; } <<<"$lines"
	check "counters: ns2 TUN counts the inner bytes (840..2499 each way)" \
		test "${rxb:-0}" -ge 840 -a "${rxb:-0}" -lt 2500 -a "${txb:-0}" -ge 840 -a "${txb:-0}" -lt 2500
}
