#!/bin/bash
# Runs one scenario of the Ferroguard network-namespace test suite in its own process.
#
#   netns.sh SCENARIO [ID]   run one scenario (normally called by run.sh, which numbers the results)
#   netns.sh --list          list the scenarios
#
# Every scenario is a file scenarios/NAME.sh that defines scenario_NAME (and its own helpers, named after it);
# the helpers several scenarios share (checks, topologies, traffic, probes) are in lib.sh.
#
# Environment: WG_IMPL1 / WG_IMPL2 (daemon commands; impl1 serves the interface that ends up in ns1,
# impl2 the one in ns2), FGT_RESULTS (file the result lines are appended to; default: stdout),
# FGT_LOGDIR (daemon logs etc.), FGT_SINGLE_TARGETS ("1 2": which implementations the one-daemon scenarios
# test), FGT_LABEL (prefix of every check name), FGT_OWNER / FGT_ID (names, see lib.sh).
#
# The topology follows the kernel's tools/testing/selftests/wireguard/netns.sh: ns0 owns the loopback
# endpoints, the daemons start in ns0 (so their UDP sockets live there) and their interfaces are moved to
# ns1 and ns2 (topo_loopback in lib.sh). Scenarios that need veth topologies start the daemons inside ns1/ns2
# instead (topo_nat, topo_veth). Every scenario builds its own namespaces and removes them (EXIT trap), also
# when it fails or is killed.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
for scenario_file in "$HERE"/scenarios/*.sh; do
	# shellcheck source=/dev/null
	source "$scenario_file"
done

# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------

list_scenarios() { declare -F | awk '$3 ~ /^scenario_/ { sub(/^scenario_/, "", $3); print $3 }'; }

main() {
	if [[ ${1:-} == --list ]]; then
		list_scenarios
		exit 0
	fi
	local scenario=${1:-}
	if [[ -z $scenario ]] || ! declare -F "scenario_$scenario" >/dev/null; then
		echo "usage: $0 SCENARIO | --list   (scenarios: $(list_scenarios | tr '\n' ' '))" >&2
		exit 2
	fi
	if [[ $EUID != 0 ]]; then
		echo "$0: must run as root (network namespaces)" >&2
		exit 2
	fi
	if [[ -n ${FGT_RESULTS:-} ]]; then exec 5>>"$FGT_RESULTS"; else exec 5>&1; fi
	exec 1>&2
	local default_impl=${FERROGUARD:-$(cd "$HERE/../.." && pwd)/target/release/ferroguard}
	WG_IMPL1=${WG_IMPL1:-$default_impl}
	WG_IMPL2=${WG_IMPL2:-$default_impl}
	if [[ -z ${FGT_SINGLE_TARGETS+set} ]]; then
		FGT_SINGLE_TARGETS="1 2"
		[[ $WG_IMPL1 == "$WG_IMPL2" ]] && FGT_SINGLE_TARGETS=1
	fi
	if [[ -z ${FGT_LOGDIR:-} ]]; then
		FGT_LOGDIR=$(mktemp -d /tmp/fgt-netns-XXXXXX)
		FGT_OWN_LOGDIR=1
	fi
	mkdir -p "$FGT_LOGDIR"
	FGT_SCENARIO=$scenario
	# The id may come as a second argument (run.sh passes it so that leftovers can be told from live runs).
	FGT_ID=${2:-${FGT_ID:-}}
	fgt_init_names
	trap fgt_cleanup EXIT
	trap 'exit 143' TERM
	trap 'exit 130' INT
	trap 'exit 129' HUP
	fgt_log "scenario $scenario: impl1='$WG_IMPL1' impl2='$WG_IMPL2' id $FGT_ID logs $FGT_LOGDIR"
	make_keys || fgt_abort "wg genkey/pubkey failed"
	"scenario_$scenario"
	# Every scenario ends the way a user would: SIGTERM, after which nothing may be left.
	if daemons_running; then
		check "${scenario//_/ }: daemons exit on SIGTERM, removing their sockets and interfaces" stop_all_daemons
	fi
	exit "$FGT_FAILED"
}

main "$@"
