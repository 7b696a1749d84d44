#!/bin/bash
# Scenario "low_order" (kernel #24): low-order public keys must never produce a packet, one
# implementation at a time.

LOW_ORDER_KEYS=(
	AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
	4Ot6fDtBuK4WVuP68Z/EatoJjeucMrH9hmIFFl9JuAA= X5yVvKNQjCSx0LFVnIPvWwREXMRYHI6G2CJO3dCfEVc=
	7P///////////////////////////////////////38= 7f///////////////////////////////////////38=
	7v///////////////////////////////////////38=
)

low_order_for() {
	local n=$1 a p key count
	a=$(ifname "O$n")
	p="low-order keys (impl$n $(impl_kind "$n"))"
	must start_daemon "$n" "$a" "$NS0"
	must wgc set "$a" private-key <(echo "$key1")
	# Listen before the peers exist: an implementation may send as soon as a keepalive is configured.
	must udp_listen_start "$NS0" 127.0.0.1 1111 3.5 0
	for key in "${LOW_ORDER_KEYS[@]}"; do
		must wgc set "$a" peer "$key" persistent-keepalive 1 endpoint 127.0.0.1:1111
	done
	count=$(wg show "$a" peers | wc -l)
	check "$p: the 7 peers are accepted" equals peer-count "$count" 7
	must ip0 link set "$a" up
	udp_listen_result
	if [[ $UDP_RECEIVED == 0 ]]; then
		pass "$p: nothing is sent to them (listened 2+ s after link up)"
	else
		fail "$p: nothing is sent to them (listened 2+ s after link up)" "$UDP_RECEIVED datagram(s) received"
	fi
	# Control: the same set-up with an ordinary key does send (so silence above means something).
	must udp_listen_start "$NS0" 127.0.0.1 1111 3 1
	must wgc set "$a" peer "$pub2" persistent-keepalive 1 endpoint 127.0.0.1:1111
	udp_listen_result
	check "$p: control: an ordinary peer with the same settings gets a handshake" equals datagrams "$UDP_RECEIVED" 1
	# Stopped here, so that the next implementation's daemons can use the same ports.
	check "$p: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
}

scenario_low_order() {
	no_single_targets "low_order" && return
	make_namespaces
	local n
	for n in $(single_targets); do low_order_for "$n"; done
}
