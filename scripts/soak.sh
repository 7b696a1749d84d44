#!/usr/bin/env bash
# Soak test with a sped-up engine clock: many rekeys under steady traffic, watching for leaks and stalls.
#
#   scripts/soak.sh [MINUTES]                 (default 10)
#   scripts/soak.sh --seconds 60 --min-rekeys 10   (CI's short version)
#   options: --speed K (default 40)  --min-rekeys N (default: one per 6 s of the run, 100 for 10 minutes)
#            --rate MBIT (iperf3 TCP rate, default 20)  --binary PATH (a ferroguard built with test-clock;
#            default: build it into ${FERROGUARD_SOAK_TARGET_DIR:-target/variants})  --keep-logs
#
# Builds the daemon with the cargo feature `test-clock` (apart from target/release, as
# scripts/check-no-selftest.sh does) and starts two of them with FERROGUARD_TEST_CLOCK_SPEED=K in two
# network namespaces joined by a veth. Their engine time runs K times faster: at K = 40 REKEY_AFTER_TIME
# (120 s) comes every 3 s, so a 10-minute run sees about 200 handshakes. Traffic: iperf3 TCP at a moderate
# rate one way and 5 pings a second the other way, for the whole run. Every 10 s it samples each daemon's RSS
# (VmRSS), open descriptors and threads, the handshakes so far (the "handshake complete" lines of the first
# daemon's debug log: one per handshake) and the pings answered in that window.
#
# Fails if: a daemon exits; RSS grows by more than 2 MiB between the first and the last third of the samples
# (means); descriptors or threads ever exceed their first sample; a window has no ping answered (a stall);
# fewer than --min-rekeys handshakes after the first; iperf3 does not finish with data moved.
# Prints a table, then "ok"/"not ok" lines, a verdict and "N passed, N failed". Needs root, iperf3, wg.
# Everything it creates (namespaces fgsoak-<pid>-a/b, interfaces fgs<id>*, processes) goes on exit.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

minutes=10 seconds="" speed=40 min_rekeys="" rate=20 binary="" keep_logs=0
while (($#)); do
	case $1 in
	--seconds) seconds=$2; shift ;;
	--speed) speed=$2; shift ;;
	--min-rekeys) min_rekeys=$2; shift ;;
	--rate) rate=$2; shift ;;
	--binary) binary=$2; shift ;;
	--keep-logs) keep_logs=1 ;;
	-h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	[0-9]*) minutes=$1 ;;
	*) echo "soak.sh: unknown argument '$1'" >&2; exit 2 ;;
	esac
	shift
done
[[ $minutes =~ ^[0-9]+$ ]] || { echo "soak.sh: MINUTES must be a whole number" >&2; exit 2; }
seconds=${seconds:-$((minutes * 60))}
min_rekeys=${min_rekeys:-$((seconds / 6))}
for n in "$seconds" "$speed" "$min_rekeys" "$rate"; do
	[[ $n =~ ^[0-9]+$ ]] || { echo "soak.sh: '$n' is not a whole number" >&2; exit 2; }
done
((seconds >= 30)) || { echo "soak.sh: run for at least 30 s (three samples)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "soak.sh: run as root (network namespaces, TUN devices)" >&2; exit 2; }
for tool in ip wg iperf3 ping timeout; do
	command -v "$tool" >/dev/null || { echo "soak.sh: missing tool: $tool" >&2; exit 2; }
done

SAMPLE_EVERY=10
RSS_GROWTH_LIMIT_KB=2048
RUN=$(mktemp -d /tmp/fgsoak-XXXXXX)
ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
NSA="fgsoak-$$-a" NSB="fgsoak-$$-b"
WGA="fgs${ID}a" WGB="fgs${ID}b" VETHA="fgs${ID}va" VETHB="fgs${ID}vb"
PIDS=()
passed=0 failed=0

log() { printf '%(%H:%M:%S)T %s\n' -1 "$*" >&2; }

cleanup() {
	trap - EXIT INT TERM HUP
	local pid ns
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	sleep 0.5
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	for ns in "$NSA" "$NSB"; do
		ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qxF -- "$ns" || continue
		# Only our own processes live in these namespaces.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
		ip netns del "$ns" 2>/dev/null
	done
	rm -f -- "/var/run/wireguard/$WGA.sock" "/var/run/wireguard/$WGB.sock"
	if ((failed || keep_logs)); then
		echo "logs kept in $RUN"
	else
		rm -rf -- "$RUN"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# result OK NAME: one "ok"/"not ok" line, counted.
result() {
	if [[ $1 == 1 ]]; then
		echo "ok - $2"
		passed=$((passed + 1))
	else
		echo "not ok - $2"
		failed=$((failed + 1))
	fi
}

# ----- the test-clock daemon ------------------------------------------------------------------------------

if [[ -z $binary ]]; then
	target_dir=${FERROGUARD_SOAK_TARGET_DIR:-target/variants}
	log "building ferroguard with the test-clock feature into $target_dir"
	cargo build -p ferroguard --release --features test-clock --bin ferroguard --target-dir "$target_dir" >&2 ||
		{ echo "soak.sh: build failed" >&2; exit 1; }
	binary=$target_dir/release/ferroguard
fi
# A copy: a later build in the same target directory cannot swap the binary under the running daemons.
cp -- "$binary" "$RUN/ferroguard" || exit 1
version=$("$RUN/ferroguard" --version)
[[ $version == *test-clock* ]] || { echo "soak.sh: $binary lacks the test-clock feature ($version)" >&2; exit 1; }

# ----- topology -------------------------------------------------------------------------------------------

# start_daemon NS IFNAME: the daemon in the foreground inside NS, debug log in $RUN/IFNAME.log; waits for its socket.
start_daemon() {
	local ns=$1 ifname=$2 i
	ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=debug FERROGUARD_TEST_CLOCK_SPEED="$speed" \
		"$RUN/ferroguard" -f "$ifname" >"$RUN/$ifname.log" 2>&1 &
	PIDS+=($!)
	DAEMON_PID=$!
	for ((i = 0; i < 100; i++)); do
		[[ -S /var/run/wireguard/$ifname.sock ]] && ip -n "$ns" link show dev "$ifname" &>/dev/null && return 0
		sleep 0.05
	done
	echo "soak.sh: the daemon for $ifname did not come up (log: $RUN/$ifname.log)" >&2
	return 1
}

setup() {
	local keya keyb psk
	ip netns add "$NSA" && ip netns add "$NSB" || return 1
	ip -n "$NSA" link set lo up && ip -n "$NSB" link set lo up || return 1
	ip -n "$NSA" link add "$VETHA" type veth peer name "$VETHB" netns "$NSB" || return 1
	ip -n "$NSA" addr add 10.201.0.1/24 dev "$VETHA" && ip -n "$NSA" link set "$VETHA" up || return 1
	ip -n "$NSB" addr add 10.201.0.2/24 dev "$VETHB" && ip -n "$NSB" link set "$VETHB" up || return 1
	start_daemon "$NSA" "$WGA" || return 1
	PIDA=$DAEMON_PID
	start_daemon "$NSB" "$WGB" || return 1
	PIDB=$DAEMON_PID
	keya=$(wg genkey) keyb=$(wg genkey) psk=$(wg genpsk)
	wg set "$WGA" private-key <(echo "$keya") listen-port 51820 peer "$(wg pubkey <<<"$keyb")" \
		preshared-key <(echo "$psk") endpoint 10.201.0.2:51820 allowed-ips 192.168.243.2/32 || return 1
	wg set "$WGB" private-key <(echo "$keyb") listen-port 51820 peer "$(wg pubkey <<<"$keya")" \
		preshared-key <(echo "$psk") endpoint 10.201.0.1:51820 allowed-ips 192.168.243.1/32 || return 1
	ip -n "$NSA" addr add 192.168.243.1/24 dev "$WGA" && ip -n "$NSA" link set "$WGA" up || return 1
	ip -n "$NSB" addr add 192.168.243.2/24 dev "$WGB" && ip -n "$NSB" link set "$WGB" up || return 1
	ip netns exec "$NSA" ping -n -c 3 -i 0.3 -W 2 192.168.243.2 >/dev/null
}

setup || { result 0 "set-up (namespaces, daemons, first handshake)"; echo "$passed passed, $failed failed"; exit 1; }
log "daemons $PIDA ($WGA in $NSA) and $PIDB ($WGB in $NSB), engine clock x$speed, $seconds s"

# ----- traffic --------------------------------------------------------------------------------------------

ip netns exec "$NSB" iperf3 -s -1 -B 192.168.243.2 -p 5201 >"$RUN/iperf-server.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
	ip netns exec "$NSB" ss -tlnH "sport = :5201" 2>/dev/null | grep -q . && break
	sleep 0.05
done
ip netns exec "$NSA" timeout $((seconds + 30)) iperf3 -J -c 192.168.243.2 -p 5201 -t "$seconds" -b "${rate}M" \
	>"$RUN/iperf.json" 2>"$RUN/iperf-client.log" &
IPERF_PID=$!
PIDS+=("$IPERF_PID")
# Pings the other way, 5 a second, timestamped (-D) so that each window's answers can be counted.
ip netns exec "$NSB" ping -D -n -i 0.2 -W 1 -c $((seconds * 5)) 192.168.243.1 >"$RUN/ping.log" 2>&1 &
PING_PID=$!
PIDS+=("$PING_PID")

# ----- sampling -------------------------------------------------------------------------------------------

# alive PID: 1 while the process exists and is not a zombie, else 0.
alive() { [[ $(status_field "$1" State) =~ ^[^Z] ]] && echo 1 || echo 0; }
status_field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
handshakes() { grep -c "handshake complete" "$RUN/$WGA.log"; }

# answers_between FROM TO: ping answers whose timestamp falls in (FROM, TO] (microseconds since the epoch;
# ping -D prints seconds with six decimals).
answers_between() {
	awk -v from="$1" -v to="$2" '/bytes from/ { t = substr($1, 2, length($1) - 2); sub(/\./, "", t); t += 0
		if (t > from + 0 && t <= to + 0) n++ }
		END { print n + 0 }' "$RUN/ping.log"
}

declare -a T RSSA FDA THA RSSB FDB THB HS PINGS
printf '%6s | %9s %4s %4s | %9s %4s %4s | %10s | %s\n' "t (s)" "A rss kB" "fds" "thr" "B rss kB" "fds" "thr" \
	"handshakes" "pings answered"
# Times in microseconds since the epoch (bash's EPOCHREALTIME), so that the arithmetic stays exact.
micros() { local t=${EPOCHREALTIME/./}; echo "$((10#$t))"; }
start=$(micros)
previous=$start
for ((n = 0; n * SAMPLE_EVERY < seconds; n++)); do
	wait_us=$((start + (n + 1) * SAMPLE_EVERY * 1000000 - $(micros)))
	((wait_us > 0)) && sleep "$((wait_us / 1000000)).$(printf '%06d' $((wait_us % 1000000)))"
	now=$(micros)
	T[n]=$(((n + 1) * SAMPLE_EVERY))
	RSSA[n]=$(status_field "$PIDA" VmRSS) FDA[n]=$(fd_count "$PIDA") THA[n]=$(status_field "$PIDA" Threads)
	RSSB[n]=$(status_field "$PIDB" VmRSS) FDB[n]=$(fd_count "$PIDB") THB[n]=$(status_field "$PIDB" Threads)
	HS[n]=$(handshakes)
	PINGS[n]=$(answers_between "$previous" "$now")
	previous=$now
	printf '%6s | %9s %4s %4s | %9s %4s %4s | %10s | %s\n' "${T[n]}" "${RSSA[n]:-gone}" "${FDA[n]}" "${THA[n]:-?}" \
		"${RSSB[n]:-gone}" "${FDB[n]}" "${THB[n]:-?}" "${HS[n]}" "${PINGS[n]}"
done
samples=$n

# ----- verdict --------------------------------------------------------------------------------------------

wait "$IPERF_PID" 2>/dev/null
iperf_rc=$?
wait "$PING_PID" 2>/dev/null
echo

# mean_of ARRAY FROM TO: the mean of elements FROM..TO-1.
mean_of() {
	local -n values=$1
	local i sum=0
	for ((i = $2; i < $3; i++)); do sum=$((sum + ${values[i]:-0})); done
	echo $((sum / ($3 - $2)))
}
third=$((samples / 3))
for side in A B; do
	rss="RSS$side" fds="FD$side" threads="TH$side" pid="PID$side"
	first=$(mean_of "$rss" 0 "$third") last=$(mean_of "$rss" $((samples - third)) "$samples")
	result "$(alive "${!pid}")" "daemon $side still runs"
	result $((last - first <= RSS_GROWTH_LIMIT_KB ? 1 : 0)) \
		"daemon $side RSS: first third $first kB, last third $last kB (growth $((last - first)) kB <= $RSS_GROWTH_LIMIT_KB)"
	declare -n fd_values=$fds thread_values=$threads
	max_fds=$(printf '%s\n' "${fd_values[@]}" | sort -n | tail -1)
	max_threads=$(printf '%s\n' "${thread_values[@]}" | sort -n | tail -1)
	result $((max_fds <= fd_values[0] ? 1 : 0)) "daemon $side descriptors never above the first sample (${fd_values[0]}, max $max_fds)"
	result $((max_threads <= thread_values[0] ? 1 : 0)) "daemon $side threads never above the first sample (${thread_values[0]}, max $max_threads)"
	unset -n fd_values thread_values
done
stalls=0
for ((i = 0; i < samples; i++)); do ((PINGS[i] == 0)) && stalls=$((stalls + 1)); done
result $((stalls == 0 ? 1 : 0)) "no stall: every ${SAMPLE_EVERY} s window had ping answers ($stalls windows without)"
rekeys=$((HS[samples - 1] - 1))
result $((rekeys >= min_rekeys ? 1 : 0)) "rekeys: $rekeys handshakes after the first (at least $min_rekeys)"
iperf_figure=$(python3 - "$RUN/iperf.json" <<'EOF' 2>&1
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError) as err:
    print("unreadable iperf3 output: %s" % err); sys.exit(1)
if data.get("error"):
    print("iperf3 error: %s" % data["error"]); sys.exit(1)
received = data.get("end", {}).get("sum_received", {})
print("%.1f Mbit/s, %d MB" % (received.get("bits_per_second", 0) / 1e6, received.get("bytes", 0) / 1e6))
sys.exit(0 if received.get("bytes", 0) > 0 else 1)
EOF
)
iperf_ok=$?
result $((iperf_rc == 0 && iperf_ok == 0 ? 1 : 0)) "iperf3 TCP at $rate Mbit/s for $seconds s: $iperf_figure"
ping_summary=$(grep -E "packets transmitted" "$RUN/ping.log")
echo "# ping: ${ping_summary:-no summary}"
echo "# engine clock x$speed, $samples samples, $(grep -c "sending handshake initiation" "$RUN/$WGA.log") initiations sent by A, $(grep -c "sending handshake initiation" "$RUN/$WGB.log") by B"
if ((failed)); then echo "verdict: FAIL"; else echo "verdict: PASS"; fi
echo "$passed passed, $failed failed"
((failed == 0))
