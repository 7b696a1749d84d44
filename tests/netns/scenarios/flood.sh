#!/bin/bash
# Scenario "flood": a handshake flood against an established tunnel under load.
#
#   The kernel topology (both daemons' UDP sockets on ns0's loopback). Before the first handshake, a genuine
#   initiation of ns1's peer to ns2's daemon is recorded (examples/hsflood.rs "capture": made by the engine from
#   ns1's private key, i.e. exactly the bytes an attacker would copy off the wire; ns1 then initiates the real
#   handshake, so the recorded one is superseded). Then three rounds of:
#     1. baseline: iperf3 TCP ns1 -> ns2 through the tunnel, 5 s;
#     2. the same while hsflood in ns0 floods ns2's daemon (127.0.0.1:2) from 64 addresses (127.0.0.10...)
#        x 4 ports per kind with an even mix of garbage handshake-typed datagrams of handshake sizes, initiations
#        from an unknown peer with a valid mac1, and the recorded initiation replayed.
#   The best baseline and the best flooded run are compared: 5 s runs, alternating, best of three, because on a
#   busy machine a single run can lose a second to a neighbour's compile (consecutive baselines here differ by up
#   to 40 %). About 45 s per pair; the pairs after the first run one round (below).
#   Checks, with figures: goodput under flood >= 70 % of the baseline (see the bound below); cookie replies came back for the valid-mac1
#   part (the daemon went under load); neither the valid-mac1 nor the replayed part got a handshake response;
#   latest-handshakes and endpoints of both daemons unchanged (no rekey is due: the session is < 90 s old, and
#   REKEY_AFTER_TIME is 120 s); the target's RSS after the flood <= its RSS before + 16 MiB (its handshake queue
#   holds at most 1024 datagrams and the rate limiter at most 8192 sources, well under 1 MiB together; a leak of
#   even 16 bytes per flood datagram would exceed the bound over the ~400 000 sent) and its descriptor count
#   unchanged; after the flood a fresh handshake (ns1 drops and re-adds its peer) completes within 3 s, so ns2's
#   daemon answered the first initiation directly: it had left the under-load state (a cookie round would have
#   cost REKEY_TIMEOUT, 5 s).
#
#   The attacker's CPU is not ours: on a 2-core machine the flooder, iperf3 and both daemons share two CPUs, and a
#   flooder at full speed measures the scheduler as much as the daemon. hsflood therefore runs under nice -n 19
#   and capped at FGT_FLOOD_RATE datagrams/s (default 20 000, 40 times the 512 handshake messages/s that put a
#   daemon under load). Measured on the 2-core development machine (RELIABILITY.md): one unniced hsflood thread
#   sends about 110 000 datagrams/s; niced beside iperf3 it still gets 48 000-66 000/s, where Ferroguard keeps
#   71-76 % of its goodput (it spends about 4 us per rejected and 10 us per cookie-answered datagram); at
#   20 000/s it keeps 92-95 %. FGT_FLOOD_RATE=0 floods at full (niced) speed. FLOOD_TEST_PORT=9 aims the flood at
#   a port where nothing listens instead of the daemon (for measuring what the flood costs without any daemon
#   work: the goodput failing then is the machine's floor, not the daemon's; see RELIABILITY.md).
#
#   wireguard-go pairs: everything is measured and printed; checks it does not meet are SKIPped (FGT_UNSUPPORTED below:
#   the RSS bound, as wireguard-go's RSS grows from ~43 MB to 88-166 MB under this flood, and the goodput bound,
#   which is Ferroguard's target: wireguard-go kept 78-97 % over our runs).

FLOOD_SECONDS=5
FLOOD_ROUNDS=3
# The pairs after the first (FGT_QUICK=1) run one round: they check that the two implementations
# still understand each other under a flood (cookie replies, no responses to the flood, a fresh
# handshake afterwards); the goodput bound needs the best of three and is checked in the first pair.
[[ ${FGT_QUICK:-0} == 1 ]] && FLOOD_ROUNDS=1
FLOOD_RSS_MARGIN_KB=$((16 * 1024))

# flood_hsflood: the flooder binary: FGT_HSFLOOD, else next to $FERROGUARD or a ferroguard under test
# (target/release/examples/hsflood beside target/release/ferroguard), else the repository's release build.
flood_hsflood() {
	local candidate repo dirs=() n impl
	repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
	[[ -n ${FERROGUARD:-} ]] && dirs+=("$(dirname "$FERROGUARD")")
	for n in 1 2; do
		impl="WG_IMPL$n"
		impl=${!impl%% *}
		[[ $(impl_kind "$n") == ferroguard && $impl == */* ]] && dirs+=("$(dirname "$impl")")
	done
	dirs+=("$repo/target/release")
	for candidate in "${FGT_HSFLOOD:-}" "${dirs[@]/%//examples/hsflood}"; do
		[[ -n $candidate && $candidate != /* ]] && candidate="$repo/$candidate"
		[[ -n $candidate && -x $candidate && -f $candidate ]] && { printf '%s' "$candidate"; return 0; }
	done
	return 1
}

# Known differences of Debian's wireguard-go 0.0.20220316 as the flooded daemon (impl2; see lib.sh's "supported").
FGT_UNSUPPORTED[wireguard-go:flood_rss]="wireguard-go's RSS grows by more than 16 MiB under the flood (43 MB to 88-166 MB here; figure above)"
FGT_UNSUPPORTED[wireguard-go:flood_goodput]="the 70 % bound is Ferroguard's target; wireguard-go kept 78-97 % over our runs (figure above)"

# flood_rss PID / flood_fds PID: resident set (kB) and open descriptors of a process.
flood_rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
flood_fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# flood_cpu PID: user + system CPU time in clock ticks (fields 14 and 15 of /proc/PID/stat, counted
# after the command name, which may hold spaces).
flood_cpu() { local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) && awk '{ print $12 + $13 }' <<<"${stat##*) }"; }

# flood_cpu_seconds TICKS: clock ticks as seconds with two decimals.
flood_cpu_seconds() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }

# flood_mbits JSONFILE: the TCP goodput in Mbit/s (integer), or nothing.
flood_mbits() {
	local figure
	figure=$(iperf_throughput "$1") || return 1
	[[ $figure =~ ^([0-9]+)(\.[0-9]+)?\ Mbit/s ]] && printf '%s' "${BASH_REMATCH[1]}"
}

# flood_iperf LABEL: one 5 s TCP run ns1 -> ns2; prints the goodput in Mbit/s (0 if it failed).
flood_iperf() {
	# shellcheck disable=SC2034 # read by iperf_pair (dynamic scope)
	local json mbits FGT_IPERF_TIME=$FLOOD_SECONDS
	json=$(mktemp "$FGT_LOGDIR/iperf-$1-XXXXXX.json")
	iperf_pair "$NS2" 192.168.241.2 "$NS1" 5201 "$json" >&2
	mbits=$(flood_mbits "$json") || mbits=0
	printf '%s' "${mbits:-0}"
}

# flood_state: what the flood must not change: the peers' latest handshakes and endpoints on both sides.
flood_state() {
	printf '%s | %s | %s | %s' "$(wg show "$IF1" latest-handshakes | cut -f2)" "$(wg show "$IF2" latest-handshakes | cut -f2)" \
		"$(wg show "$IF1" endpoints | cut -f2)" "$(wg show "$IF2" endpoints | cut -f2)"
}

# flood_with_iperf N: iperf3 with hsflood aimed at ns2's daemon; prints the goodput; the flooder's summary goes
# to $FGT_LOGDIR/flood-N.out.
flood_with_iperf() {
	local n=$1 fpid mbits
	in_ns "$NS0" timeout --foreground 30 nice -n 19 "$FLOOD_BIN" flood --target "127.0.0.1:${FLOOD_TEST_PORT:-2}" \
		--target-public "$(key_hex "$pub2")" --replay "$FLOOD_REPLAY" --seconds $((FLOOD_SECONDS + 2)) \
		--rate "${FGT_FLOOD_RATE:-20000}" --sources 64 --source-base 127.0.0.10 --ports 4 \
		>"$FGT_LOGDIR/flood-$n.out" 2>>"$FGT_LOGDIR/flood-$n.log" &
	fpid=$!
	FGT_PIDS+=("$fpid")
	sleep 1 # the flood is on, the daemon under load
	mbits=$(flood_iperf "flood$n")
	wait "$fpid" 2>/dev/null
	printf '%s' "$mbits"
}

# flood_sum KEY: the sum of KEY=value over the flooder's summaries.
flood_sum() {
	cat "$FGT_LOGDIR"/flood-*.out 2>/dev/null | grep -o "\b$1=[0-9]*" | cut -d= -f2 | awk '{ s += $1 } END { print s + 0 }'
}

# flood_best N...: the largest of the numbers.
flood_best() { printf '%s\n' "$@" | sort -n | tail -n 1; }

# flood_fresh_handshake: ns1 drops its session (peer removed, added again) and pings; prints the milliseconds
# until ns2's daemon reports a new latest handshake, or "none" after 10 s.
flood_fresh_handshake() {
	local before start now
	before=$(wg show "$IF2" latest-handshakes | cut -f2)
	wgc set "$IF1" peer "$pub2" remove >&2
	wgc set "$IF1" peer "$pub2" preshared-key <(echo "$psk") endpoint 127.0.0.1:2 \
		allowed-ips 192.168.241.2/32,fd00::2/128 >&2
	start=$(date +%s%N)
	in_ns "$NS1" ping -n -c 1 -W 1 192.168.241.2 >/dev/null 2>&1 &
	while :; do
		now=$(date +%s%N)
		if [[ $(wg show "$IF2" latest-handshakes | cut -f2) != "$before" && $(wg show "$IF1" latest-handshakes | cut -f2) != 0 ]]; then
			printf '%s' $(((now - start) / 1000000))
			break
		fi
		((now - start > 10000000000)) && { printf none; break; }
		sleep 0.05
	done
	wait
}

scenario_flood() {
	local keyfile baseline flooded before after rss_before rss_after fds_before fds_after
	local pid2 cookies responses ms summary cpu round bases floods base_ticks flood_ticks
	FLOOD_BIN=$(flood_hsflood) || fgt_abort "hsflood not found: build it with 'cargo build --release --example hsflood' (or set FGT_HSFLOOD)"
	topo_loopback

	# The recording, before any handshake (the kernel's base-time TAI64N is whitened to 2^24 ns: the real
	# handshake below comes seconds later, so it is strictly newer).
	keyfile="$FGT_LOGDIR/initiator.key"
	FLOOD_REPLAY="$FGT_LOGDIR/captured-initiation.hex"
	(umask 077; key_hex "$key1" >"$keyfile")
	must "$FLOOD_BIN" capture --key-file "$keyfile" --peer-public "$(key_hex "$pub2")" --out "$FLOOD_REPLAY"
	rm -f -- "$keyfile"
	sleep 0.1

	# ns1 initiates the real handshake (ns2 has no endpoint yet, so it cannot be the initiator).
	must wgc set "$IF1" peer "$pub2" endpoint 127.0.0.1:2
	check "flood: session up (ns1 initiates)" ping_retry "$NS1" 192.168.241.2
	must wgc set "$IF2" peer "$pub1" endpoint 127.0.0.1:1
	check "flood: session up (ns2 -> ns1)" ping_all "$NS2" 192.168.241.1 5

	# Baseline and flooded runs alternate, so that a neighbour's load on the machine hits both alike.
	pid2=${FGT_DAEMON_PID[$IF2]}
	bases=() floods=() base_ticks=0 flood_ticks=0
	for ((round = 1; round <= FLOOD_ROUNDS; round++)); do
		cpu=$(flood_cpu "$pid2")
		bases+=("$(flood_iperf "base$round")")
		base_ticks=$((base_ticks + $(flood_cpu "$pid2") - cpu))
		if ((round == 1)); then
			before=$(flood_state)
			rss_before=$(flood_rss "$pid2")
			fds_before=$(flood_fds "$pid2")
		fi
		cpu=$(flood_cpu "$pid2")
		floods+=("$(flood_with_iperf "$round")")
		flood_ticks=$((flood_ticks + $(flood_cpu "$pid2") - cpu))
	done
	baseline=$(flood_best "${bases[@]}")
	flooded=$(flood_best "${floods[@]}")
	sleep 0.5
	after=$(flood_state)
	rss_after=$(flood_rss "$pid2")
	fds_after=$(flood_fds "$pid2")
	for summary in "$FGT_LOGDIR"/flood-*.out; do note "hsflood: $(tail -n 1 "$summary")"; done
	note "goodput without flood: ${bases[*]} Mbit/s; under flood: ${floods[*]} Mbit/s (best $flooded of $baseline: $((baseline > 0 ? flooded * 100 / baseline : 0)) %)"
	note "ns2's daemon's CPU time: $(flood_cpu_seconds "$base_ticks") s over the baseline runs, $(flood_cpu_seconds "$flood_ticks") s over the flooded ones"
	note "ns2's daemon: RSS $rss_before kB before the first flood, $rss_after kB after the last; descriptors $fds_before, then $fds_after"

	check "flood: the flooder sent (at least 100 000 datagrams in all)" test "$(flood_sum sent)" -ge 100000
	check "flood: both daemons still run" \
		eval 'pid_running "${FGT_DAEMON_PID[$IF1]}" && pid_running "${FGT_DAEMON_PID[$IF2]}"'
	# The bound leaves room for the machine: on 2026-12-07 the same flood aimed at a dead port (FLOOD_TEST_PORT=9,
	# no daemon work at all) already kept only 91 %, and Ferroguard kept 76-99 % (the session's first build 80-83 %),
	# so 80 % failed one run in five. A daemon that did Diffie-Hellman for the flood's ~13 000 handshake-shaped
	# datagrams/s (two X25519 each, tens of µs) would spend about a core on them, far more than 30 % (RELIABILITY.md).
	if ((FLOOD_ROUNDS < 3)); then
		skip "flood: goodput under flood >= 70 % of the baseline ($flooded vs $baseline Mbit/s)" \
			"one round in a quick run; the bound takes the best of three (the first pair checks it)"
	elif supported flood_goodput "flood: goodput under flood >= 70 % of the baseline ($flooded vs $baseline Mbit/s)" 2; then
		check "flood: goodput under flood >= 70 % of the baseline ($flooded vs $baseline Mbit/s)" \
			eval '((baseline > 0 && flooded * 100 >= baseline * 70))'
	fi
	cookies=$(flood_sum mac1_cookies)
	check "flood: ns2's daemon went under load: cookie replies to the valid-mac1 initiations ($cookies)" \
		test "$cookies" -gt 0
	responses=$(($(flood_sum mac1_responses) + $(flood_sum replay_responses)))
	check "flood: no handshake response to the flood, replayed genuine initiation included ($responses; replay answered by $(flood_sum replay_cookies) cookie replies)" \
		test "$responses" -eq 0
	check "flood: latest handshakes and endpoints unchanged ($after)" equals state "$after" "$before"
	if supported flood_rss "flood: ns2's daemon's RSS bounded ($rss_after kB <= $rss_before + $FLOOD_RSS_MARGIN_KB kB)" 2; then
		check "flood: ns2's daemon's RSS bounded ($rss_after kB <= $rss_before + $FLOOD_RSS_MARGIN_KB kB)" \
			eval '[[ -n $rss_after && -n $rss_before ]] && ((rss_after <= rss_before + FLOOD_RSS_MARGIN_KB))'
	fi
	check "flood: ns2's daemon's descriptor count unchanged ($fds_after, before $fds_before)" \
		equals descriptors "$fds_after" "$fds_before"

	sleep 1.5 # the flooder stopped; UNDER_LOAD_HOLD is 1 s
	ms=$(flood_fresh_handshake)
	check "flood: a fresh handshake after the flood completes within 3 s ($ms ms)" \
		eval '[[ $ms =~ ^[0-9]+$ ]] && ((ms <= 3000))'
	check "flood: the session works after the flood" ping_all "$NS1" 192.168.241.2 10
}
