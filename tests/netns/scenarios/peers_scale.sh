#!/bin/bash
# Scenario "peers_scale": a large configuration request while traffic flows and a client stalls (issue #20).
#
#   Loopback topology, the session up (ping). Then, at the same time:
#     - a client sends half a set request (a whole peer, then half a line) on IF1's socket and goes silent;
#     - ns2 pings ns1 through the tunnel every 10 ms;
#     - IF1 gets PEERS_SCALE_COUNT (2^17) more peers, each with its own /32, in one `wg addconf`.
#   Checks: the addconf succeeds (exit 0) while the silent client still holds its connection (so it did not
#   wait for it); `wg show IF1 peers | wc -l` is exactly 2^17 + 1 and the half-sent peer is not among them;
#   at least one ping through the existing peer was answered between the start and the end of the load; the
#   silent client is dropped by the daemon (within 30 s: Ferroguard's idle limit is 10 s); the tunnel still
#   works; then a `wg setconf` that keeps only the tunnel peer succeeds, leaves exactly one peer, and the
#   tunnel works. Liveness bounds only (no timing bound): the load must end within 120 s.
# Needs Ferroguard as implementation 1: wireguard-go holds at most 65 536 peers (skipped otherwise).

PEERS_SCALE_PY="$(dirname "${BASH_SOURCE[0]}")/peers_scale.py"
PEERS_SCALE_COUNT=${PEERS_SCALE_COUNT:-131072}

scenario_peers_scale() {
	local conf ready half_pid ping_pid start end status count answered half_out half_key
	if [[ $(impl_kind 1) != ferroguard ]]; then
		skip "peers_scale" "implementation 1 is not ferroguard (wireguard-go holds at most 65 536 peers)"
		return
	fi
	topo_loopback
	endpoints_v4
	check "peers_scale: the tunnel works before the load" ping_retry "$NS2" 192.168.241.1
	conf="$FGT_LOGDIR/peers.conf"
	must python3 "$PEERS_SCALE_PY" conf "$PEERS_SCALE_COUNT" "$conf"

	ready=$(mktemp -u "$FGT_LOGDIR/half-ready-XXXXXX")
	timeout --foreground 40 python3 "$PEERS_SCALE_PY" half "$(sock_path "$IF1")" 30 "$ready" \
		>"$FGT_LOGDIR/half.out" 2>&1 &
	half_pid=$!
	FGT_PIDS+=("$half_pid")
	must wait_ready_file "$ready" "$half_pid" "half-request client"

	in_ns "$NS2" timeout --foreground 150 ping -D -n -i 0.01 -W 5 192.168.241.1 >"$FGT_LOGDIR/ping.out" 2>&1 &
	ping_pid=$!
	FGT_PIDS+=("$ping_pid")
	sleep 0.5
	start=$(date +%s.%N)
	timeout --foreground 120 wg addconf "$IF1" "$conf" 2>"$FGT_LOGDIR/addconf.err"
	status=$?
	end=$(date +%s.%N)
	note "wg addconf of $PEERS_SCALE_COUNT peers: exit $status in $(python3 -c "print('%.2f' % ($end - $start))") s"
	check "peers_scale: wg addconf of $PEERS_SCALE_COUNT peers succeeds" test "$status" -eq 0
	check "peers_scale: the load did not wait for the silent client" pid_running "$half_pid"
	sleep 0.3
	kill_pids "$ping_pid"
	wait "$ping_pid" 2>/dev/null
	answered=$(python3 "$PEERS_SCALE_PY" ping-window "$FGT_LOGDIR/ping.out" "$start" "$end")
	note "pings answered during the load: $answered"
	check "peers_scale: a ping through the existing peer is answered during the load" test "${answered:-0}" -ge 1

	count=$(wg show "$IF1" peers | wc -l)
	check "peers_scale: wg show lists exactly $((PEERS_SCALE_COUNT + 1)) peers" test "$count" -eq $((PEERS_SCALE_COUNT + 1))
	# The half-sent peer's key: 32 bytes 0xab, as wg prints it.
	half_key=$(python3 -c 'import base64; print(base64.b64encode(bytes([0xab] * 32)).decode())')
	check "peers_scale: nothing of the half-sent request was applied" \
		eval '! wg show "$IF1" peers | grep -qxF "$half_key"'
	wait_pid_exit "$half_pid" 35 || kill_pids "$half_pid"
	wait "$half_pid"
	status=$?
	half_out=$(<"$FGT_LOGDIR/half.out")
	note "the half-request client: $half_out"
	check "peers_scale: the silent half-request client is dropped" test "$status" -eq 0
	check "peers_scale: the tunnel still works after the load" ping_retry "$NS2" 192.168.241.1

	# replace_peers removes 2^17 peers in slices and ends once none is left (it must neither stop early nor
	# go on for ever): a setconf that keeps only the tunnel peer.
	local keep="$FGT_LOGDIR/keep.conf" peer2
	peer2=$(wg show "$IF2" public-key)
	wg showconf "$IF1" | awk -v key="PublicKey = $peer2" 'BEGIN { RS = ""; ORS = "\n\n" }
		/^\[Interface\]/ || index($0, key)' >"$keep"
	timeout --foreground 120 wg setconf "$IF1" "$keep" 2>"$FGT_LOGDIR/setconf.err"
	status=$?
	check "peers_scale: wg setconf keeping one peer of $((PEERS_SCALE_COUNT + 1)) succeeds" test "$status" -eq 0
	count=$(wg show "$IF1" peers | wc -l)
	check "peers_scale: after it exactly 1 peer is left" test "$count" -eq 1
	# The peer was removed and added again, its session with it: IF1 has none and starts a handshake when it
	# sends (IF2 would go on with its old keys until its rekey timeout).
	check "peers_scale: the tunnel works after the setconf" ping_retry "$NS1" 192.168.241.2
}
