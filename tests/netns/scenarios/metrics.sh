# shellcheck shell=bash
# shellcheck disable=SC2154 # pub1, pub2 are set by make_keys (lib.sh)
# Scenario metrics: the Prometheus endpoint (--metrics-listen) of the daemon that serves IF1.
#
# Loopback topology (both daemons start in ns0, so their UDP sockets and the metrics socket live there);
# only daemon 1 gets --metrics-listen 127.0.0.1:9586.
#   1. Daemon 1 listens on 127.0.0.1:9586 and daemon 2, started without the option, listens on no TCP port.
#   2. After pings and a short iperf3 run, with traffic stopped (two equal `wg show` readings around the
#      scrape): per-peer rx/tx bytes equal `wg show IF1 transfer` exactly; handshakes >= 1; the last
#      handshake equals `wg show IF1 latest-handshakes`; rx/tx packets non-zero; ferroguard_peers is 1.
#   3. Forged datagrams from a stranger's socket, made from a captured transport message sent to daemon 1:
#      the message replayed, the message with a fresh counter (its tag cannot verify) and one with an
#      unknown receiver index. The peer's `replay` and `decryption` drops rise by exactly one each, the
#      device's `unknown_index` drops by one, and rx bytes do not move.
#   4. Anything but GET /metrics is refused (404).
# Needs ferroguard as implementation 1 (wireguard-go has no metrics): skipped otherwise.

METRICS_PY="$(dirname "${BASH_SOURCE[0]}")/metrics.py"
METRICS_ADDR=127.0.0.1:9586
METRICS_OUT=/dev/null

# metrics_scrape [PATH]: GET http://$METRICS_ADDR/PATH (default: metrics) from ns0 into $METRICS_OUT (a
# fixed file, so that callers in a command substitution still leave it behind); prints the status.
metrics_scrape() {
	METRICS_OUT="$FGT_LOGDIR/metrics-scrape.txt"
	in_ns "$NS0" timeout --foreground 10 python3 "$METRICS_PY" scrape "http://$METRICS_ADDR/${1-metrics}" \
		"$METRICS_OUT"
}

# metric NAME LABELS: the value of one series in the last scrape (LABELS without the braces).
metric() { awk -v s="$1{$2}" '$1 == s { print $2 }' "$METRICS_OUT"; }

# peer_metric NAME [EXTRA_LABELS]: a series of IF1's only peer (ns2's key).
peer_metric() { metric "$1" "interface=\"$IF1\",peer=\"$pub2\"${2:+,$2}"; }

# metrics_tcp_listeners PID: the TCP ports PID listens on in ns0.
metrics_tcp_listeners() {
	ss -N "$NS0" -tlnpH 2>/dev/null | awk -v p="pid=$1," 'index($0, p) { print $4 }'
}

# metrics_quiet_scrape: scrape between two equal readings of `wg show IF1 transfer` and latest-handshakes
# (so no packet moved in between); sets WG_TRANSFER and WG_HANDSHAKE. Up to 5 attempts.
metrics_quiet_scrape() {
	local i before after status
	for ((i = 0; i < 5; i++)); do
		before=$(wg show "$IF1" transfer; wg show "$IF1" latest-handshakes)
		status=$(metrics_scrape)
		after=$(wg show "$IF1" transfer; wg show "$IF1" latest-handshakes)
		if [[ $status == 200 && $before == "$after" ]]; then
			WG_TRANSFER=$(wg show "$IF1" transfer)
			WG_HANDSHAKE=$(wg show "$IF1" latest-handshakes)
			return 0
		fi
		fgt_log "traffic moved during the scrape (status $status); again"
		sleep 1
	done
	return 1
}

# metrics_capture: a transport message ns2's daemon sends to daemon 1 (port 1), captured on ns0's
# loopback while ns2 pings; sets METRICS_CAPTURE (a file of hex).
metrics_capture() {
	local ready pid
	ready=$(mktemp -u "$FGT_LOGDIR/sniff-ready-XXXXXX")
	METRICS_CAPTURE="$FGT_LOGDIR/captured-transport.hex"
	in_ns "$NS0" timeout --foreground 20 python3 "$METRICS_PY" sniff lo 1 15 "$METRICS_CAPTURE" "$ready" &
	pid=$!
	FGT_PIDS+=("$pid")
	# Not fatal here: without the sniffer, the capture below is empty and that is the failure reported.
	wait_ready_file "$ready" "$pid" sniffer
	ping_once "$NS2" 192.168.241.1
	wait_pid_exit "$pid" 16 || kill_pids "$pid"
	wait "$pid" 2>/dev/null
	[[ -s $METRICS_CAPTURE ]]
}

scenario_metrics() {
	if [[ $(impl_kind 1) != ferroguard ]]; then
		skip "metrics" "implementation 1 is not ferroguard (no --metrics-listen)"
		return
	fi
	METRICS_OUT="$FGT_LOGDIR/metrics-scrape.txt"
	local saved_impl1=$WG_IMPL1
	WG_IMPL1="$WG_IMPL1 --metrics-listen $METRICS_ADDR"
	topo_loopback
	WG_IMPL1=$saved_impl1
	endpoints_v4

	# 1. Who listens.
	local pid1=${FGT_DAEMON_PID[$IF1]} pid2=${FGT_DAEMON_PID[$IF2]} listen1 listen2
	wait_listening "$NS0" t 9586
	listen1=$(metrics_tcp_listeners "$pid1")
	listen2=$(metrics_tcp_listeners "$pid2")
	note "daemon 1 listens on TCP: ${listen1:-nothing}; daemon 2: ${listen2:-nothing}"
	check "metrics: daemon 1 listens on $METRICS_ADDR" test "$listen1" = "$METRICS_ADDR"
	check "metrics: daemon 2 (no --metrics-listen) listens on no TCP port" test -z "$listen2"

	# 2. Traffic, then numbers equal to wg show.
	check "metrics: 10 flood pings ns2 -> ns1" ping_all "$NS2" 192.168.241.1 10
	iperf_check "metrics: iperf3 TCP v4 ns2 -> ns1" "$NS1" 192.168.241.1 "$NS2"
	check "metrics: 10 flood pings ns1 -> ns2" ping_all "$NS1" 192.168.241.2 10
	must metrics_quiet_scrape
	local wg_rx wg_tx wg_ts rx tx ts handshakes rxp txp
	read -r _ wg_rx wg_tx <<<"$WG_TRANSFER"
	read -r _ wg_ts <<<"$WG_HANDSHAKE"
	rx=$(peer_metric ferroguard_peer_rx_bytes_total)
	tx=$(peer_metric ferroguard_peer_tx_bytes_total)
	ts=$(peer_metric ferroguard_peer_last_handshake_seconds)
	handshakes=$(peer_metric ferroguard_peer_handshakes_total)
	rxp=$(peer_metric ferroguard_peer_rx_packets_total)
	txp=$(peer_metric ferroguard_peer_tx_packets_total)
	note "wg show: rx $wg_rx tx $wg_tx handshake $wg_ts; metrics: rx ${rx:-?} tx ${tx:-?} handshake ${ts:-?}" \
		"handshakes ${handshakes:-?} packets rx ${rxp:-?} tx ${txp:-?}"
	check "metrics: rx bytes equal wg show transfer" test "${rx:-x}" = "$wg_rx"
	check "metrics: tx bytes equal wg show transfer" test "${tx:-x}" = "$wg_tx"
	check "metrics: transfer is not zero" test "${wg_rx:-0}" -gt 100000 -a "${wg_tx:-0}" -gt 1000
	check "metrics: last handshake equals wg show latest-handshakes" test "${ts:-x}" = "$wg_ts"
	check "metrics: at least one handshake" test "${handshakes:-0}" -ge 1
	check "metrics: packet counters move" test "${rxp:-0}" -gt 20 -a "${txp:-0}" -gt 20
	check "metrics: one peer" test "$(metric ferroguard_peers "interface=\"$IF1\"")" = 1

	# 3. Forgeries are counted as drops, and change nothing else.
	must metrics_capture
	must metrics_quiet_scrape
	local replay0 decrypt0 unknown0 rx0 replay1 decrypt1 unknown1 rx1
	replay0=$(peer_metric ferroguard_peer_drops_total 'reason="replay"')
	decrypt0=$(peer_metric ferroguard_peer_drops_total 'reason="decryption"')
	unknown0=$(metric ferroguard_drops_total "interface=\"$IF1\",reason=\"unknown_index\"")
	rx0=$(peer_metric ferroguard_peer_rx_bytes_total)
	must in_ns "$NS0" timeout --foreground 10 python3 "$METRICS_PY" forge "$METRICS_CAPTURE" 127.0.0.1 1
	sleep 0.3
	must metrics_quiet_scrape
	replay1=$(peer_metric ferroguard_peer_drops_total 'reason="replay"')
	decrypt1=$(peer_metric ferroguard_peer_drops_total 'reason="decryption"')
	unknown1=$(metric ferroguard_drops_total "interface=\"$IF1\",reason=\"unknown_index\"")
	rx1=$(peer_metric ferroguard_peer_rx_bytes_total)
	note "drops replay ${replay0:-?} -> ${replay1:-?}, decryption ${decrypt0:-?} -> ${decrypt1:-?}," \
		"unknown_index ${unknown0:-?} -> ${unknown1:-?}; rx ${rx0:-?} -> ${rx1:-?}"
	check "metrics: a replayed message counts one replay drop for the peer" \
		test "${replay1:-x}" = "$((${replay0:-0} + 1))"
	check "metrics: a message with a bad tag counts one decryption drop for the peer" \
		test "${decrypt1:-x}" = "$((${decrypt0:-0} + 1))"
	check "metrics: an unknown receiver index counts one device drop" \
		test "${unknown1:-x}" = "$((${unknown0:-0} + 1))"
	check "metrics: forgeries add no received bytes" test "${rx1:-x}" = "${rx0:-y}"

	# 4. Other paths.
	check "metrics: / is 404" test "$(metrics_scrape "")" = 404
	check "metrics: /metrics/x is 404" test "$(metrics_scrape metrics/x)" = 404
	check "metrics: still served afterwards" test "$(metrics_scrape)" = 200
}
