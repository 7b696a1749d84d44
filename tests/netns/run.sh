#!/bin/bash
# Entry point of the Ferroguard network-namespace test suite (must run as root).
#
#   tests/netns/run.sh [--quick] [--only S1,S2,...] [--pair IMPL1,IMPL2]... [--keep-logs] [--list]
#
# Implementations: WG_IMPL1 / WG_IMPL2 (if either is set, that single pair is run), else the --pair
# options, else ferroguard/ferroguard, then ferroguard/wireguard-go and wireguard-go/ferroguard (a missing
# wireguard-go fails those pairs). ferroguard = ${FERROGUARD:-target/release/ferroguard}, relative to the repo root.
# impl1 serves the interface in ns1, impl2 the one in ns2.
#
# --quick runs traffic, counters, roaming, crypto_rp, lifetime and a shorter mtu sweep for the first pair only.
# In a full run the first pair sweeps every point; the pairs after it run every scenario with the quick sweeps
# (FGT_QUICK=1): they prove that the two implementations understand each other, and the sweep's extra points
# measure Ferroguard against itself, which the first pair already did.
#
# Output: one TAP line per check ("ok N - ...", "not ok N - ...", "ok N - ... # SKIP why"), comments with
# figures and, for failed scenarios, the end of their log; then "1..N" and finally the line
# "N passed, N failed" (", N skipped" if any). Exit status 0 only if nothing failed.
#
# Time bounds: every scenario runs under timeout(1) (FGT_SCENARIO_TIMEOUT, default 150 s), the whole run
# under FGT_TOTAL_TIMEOUT (default 900 s); scenarios left when it is spent are reported as failed.
# Logs: a temporary directory, kept and printed when something failed (or with --keep-logs).

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

# Every scenario is a file tests/netns/scenarios/NAME.sh that defines scenario_NAME (netns.sh runs it). The run
# order: these first (cheap and most important first), then every other scenario file, by name.
ALL_SCENARIOS=(counters lifetime traffic roaming crypto_rp uapi keys key_change low_order nat_keepalive
	policy_routing icmp_unreachable sticky reply_to_sender route_change wg_over_wg big_mtu split_responses)
for scenario_file in "$HERE"/scenarios/*.sh; do
	scenario=$(basename "$scenario_file" .sh)
	[[ " ${ALL_SCENARIOS[*]} " == *" $scenario "* ]] || ALL_SCENARIOS+=("$scenario")
done
QUICK_SCENARIOS=(traffic counters roaming crypto_rp lifetime mtu)
# Scenarios that test one daemon at a time (each implementation once per run, not once per pair).
SINGLE_SCENARIOS=" lifetime uapi keys low_order split_responses "

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

quick=0 keep_logs=0 only="" pairs=()
while (($#)); do
	case $1 in
	--quick) quick=1 ;;
	--keep-logs) keep_logs=1 ;;
	--only) only=$2; shift ;;
	--only=*) only=${1#--only=} ;;
	--pair) pairs+=("$2"); shift ;;
	--pair=*) pairs+=("${1#--pair=}") ;;
	--list) printf '%s\n' "${ALL_SCENARIOS[@]}"; exit 0 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done

if [[ $EUID != 0 ]]; then
	echo "run.sh: must run as root (network namespaces, TUN devices)" >&2
	exit 2
fi
for tool in ip wg iperf3 ping nft python3 timeout ss; do
	if ! command -v "$tool" >/dev/null; then
		echo "run.sh: missing tool: $tool" >&2
		exit 2
	fi
done

ferroguard=${FERROGUARD:-target/release/ferroguard}
if [[ -n ${WG_IMPL1:-} || -n ${WG_IMPL2:-} ]]; then
	pairs=("${WG_IMPL1:-$ferroguard},${WG_IMPL2:-$ferroguard}")
elif ((${#pairs[@]} == 0)); then
	# The interop pairs are part of the suite: without wireguard-go, resolve_impl below fails them by name
	# (a missing dependency fails the run instead of shrinking it silently).
	pairs=("$ferroguard,$ferroguard" "$ferroguard,wireguard-go" "wireguard-go,$ferroguard")
fi

if [[ -n $only ]]; then
	IFS=, read -ra scenarios <<<"$only"
elif ((quick)); then
	scenarios=("${QUICK_SCENARIOS[@]}")
	pairs=("${pairs[0]}")
	# Scenarios with a sweep (mtu) sweep fewer points.
	export FGT_QUICK=1
else
	scenarios=("${ALL_SCENARIOS[@]}")
fi
known=" $(bash "$HERE/netns.sh" --list | tr '\n' ' ') "
for s in "${scenarios[@]}"; do
	if [[ $known != *" $s "* ]]; then
		echo "run.sh: unknown scenario '$s' (known:$known)" >&2
		exit 2
	fi
done

# resolve_impl COMMAND: absolute path for the first word (relative paths are relative to the repo root).
resolve_impl() {
	local words first rest
	read -ra words <<<"$1"
	first=${words[0]}
	rest=${words[*]:1}
	if [[ $first == */* ]]; then
		[[ $first == /* ]] || first="$REPO/$first"
		[[ -x $first && -f $first ]] || return 1
	else
		first=$(command -v "$first") || return 1
	fi
	printf '%s%s' "$first" "${rest:+ $rest}"
}

impl_label() { local first=${1%% *}; printf '%s' "${first##*/}"; }

LOGDIR=$(mktemp -d /tmp/fgt-netns-run-XXXXXX)
total=0 passed=0 failed=0 skipped=0
child="" id=""
start_time=$SECONDS
total_timeout=${FGT_TOTAL_TIMEOUT:-900}
scenario_timeout=${FGT_SCENARIO_TIMEOUT:-150}

# emit LINE: number a result line and count it.
emit() {
	local line=$1
	case $line in
	"ok - "*" # SKIP "*) total=$((total + 1)) skipped=$((skipped + 1)); echo "ok $total - ${line#ok - }" ;;
	"ok - "*) total=$((total + 1)) passed=$((passed + 1)); echo "ok $total - ${line#ok - }" ;;
	"not ok - "*) total=$((total + 1)) failed=$((failed + 1)); echo "not ok $total - ${line#not ok - }" ;;
	*) echo "$line" ;;
	esac
}

summary() {
	echo "1..$total"
	if ((failed || keep_logs)); then
		echo "# logs: $LOGDIR"
	else
		rm -rf -- "$LOGDIR"
	fi
	echo "# time: $((SECONDS - start_time)) s"
	local last="$passed passed, $failed failed"
	((skipped)) && last+=", $skipped skipped"
	echo "$last"
}

on_signal() {
	trap - INT TERM HUP
	if [[ -n $child ]]; then
		# timeout(1) leads its own process group: the scenario, its daemons and its tools.
		kill -TERM -- "-$child" 2>/dev/null
		local i
		for ((i = 0; i < 100; i++)); do
			kill -0 -- "-$child" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$child" 2>/dev/null
		wait "$child" 2>/dev/null
	fi
	[[ -n $id ]] && sweep_run "$$" "$id"
	emit "not ok - run interrupted by a signal"
	summary
	exit 130
}
trap on_signal INT TERM HUP

sweep_leftovers

# covered[impl path]: the one-daemon scenarios already run for it ("scenario scenario ...").
declare -A covered=()

for pair in "${pairs[@]}"; do
	IFS=, read -r raw1 raw2 <<<"$pair"
	impl1=$(resolve_impl "$raw1") || impl1=""
	impl2=$(resolve_impl "$raw2") || impl2=""
	label="$(impl_label "$raw1")/$(impl_label "$raw2")"
	if [[ -z $impl1 || -z $impl2 ]]; then
		missing=$([[ -z $impl1 ]] && echo "$raw1" || echo "$raw2")
		emit "not ok - [$label] implementation '$missing' not found or not executable (build it: cargo build --release)"
		continue
	fi
	echo "# pair $label: impl1 = $impl1, impl2 = $impl2"
	if [[ $pair != "${pairs[0]}" ]]; then export FGT_QUICK=1; fi
	for scenario in "${scenarios[@]}"; do
		targets=""
		if [[ $SINGLE_SCENARIOS == *" $scenario "* ]]; then
			for n in 1 2; do
				impl_var="impl$n"
				impl=${!impl_var}
				[[ " ${covered[$impl]:-} " == *" $scenario "* ]] && continue
				covered[$impl]+=" $scenario"
				targets+="$n "
			done
		else
			targets="1 2"
		fi
		remaining=$((total_timeout - (SECONDS - start_time)))
		if ((remaining < 15)); then
			emit "not ok - [$label] $scenario: not run, the run's time limit (${total_timeout} s) is spent"
			continue
		fi
		limit=$((remaining < scenario_timeout ? remaining : scenario_timeout))
		id=$(fgt_random_id)
		base="$LOGDIR/${label//\//_}-$scenario"
		mkdir -p "$base.d"
		: >"$base.results"
		scenario_start=$SECONDS
		WG_IMPL1=$impl1 WG_IMPL2=$impl2 FGT_OWNER=$$ FGT_ID=$id FGT_RESULTS=$base.results \
			FGT_LOGDIR=$base.d FGT_SINGLE_TARGETS=${targets% } FGT_LABEL="[$label] " \
			timeout -k 10 "$limit" bash "$HERE/netns.sh" "$scenario" "$id" >"$base.log" 2>&1 &
		child=$!
		wait "$child"
		rc=$?
		child=""
		sweep_run "$$" "$id"
		failed_before=$failed
		results=0
		while IFS= read -r line; do
			emit "$line"
			[[ $line == "#"* ]] || results=$((results + 1))
		done <"$base.results"
		if ((rc == 124 || rc == 137)); then
			emit "not ok - [$label] $scenario: timed out after $limit s"
		elif ((rc != 0 && failed == failed_before)); then
			emit "not ok - [$label] $scenario: exited with status $rc"
		elif ((results == 0)); then
			emit "not ok - [$label] $scenario: reported nothing"
		fi
		echo "# $scenario: $((SECONDS - scenario_start)) s"
		if ((failed > failed_before)); then
			echo "# log: $base.log"
			grep -v '^DEBUG: ' "$base.log" | tail -n 25 | sed 's/^/#   /'
		fi
	done
done

summary
((failed == 0))
