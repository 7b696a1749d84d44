#!/bin/bash
# Helpers for the Ferroguard network-namespace test suite.
#
# Sourced by netns.sh (which runs exactly one scenario per process) and by run.sh (the entry point).
# Nothing here sends traffic anywhere but to loopback or to addresses inside namespaces the suite created.
#
# Naming: every object the suite creates carries the prefix "fgt" so that leftovers of killed runs can be
# found and removed, and a per-scenario random id so that parallel runs never collide:
#   namespaces   fgt-<owner pid>-<id>-<n>     (owner = the run.sh process, or netns.sh when run alone)
#   interfaces   fgt<id><suffix>              (the UAPI socket /var/run/wireguard/<ifname>.sock is global,
#                                              so interface names must be unique on the whole machine)

# Inner time bounds use "timeout --foreground" so that every process stays in the scenario's process
# group, which run.sh signals as a whole.
FGT_PREFIX=fgt
FGT_SOCK_DIR=/var/run/wireguard
# The latest a handshake that needed one retry completes: REKEY_TIMEOUT (5 s) + the retry's jitter (at most
# 1/3 s, kernel and wireguard-go) + 1 s of slack for a busy machine. Checks that allow one lost initiation use it.
FGT_ONE_RETRY_S=6.33
# The suite's shared Python helpers: run as a command for the probes below, imported by scenarios/*.py.
FGT_NET_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fgnet.py"
export LANG=C LC_ALL=C WG_HIDE_KEYS=never

# ---------------------------------------------------------------------------------------------------------
# Logging and results
# ---------------------------------------------------------------------------------------------------------

fgt_log() { printf '%(%H:%M:%S)T %s\n' -1 "$*" >&2; }

FGT_FAILED=0
# Result lines go to fd 5 (netns.sh points it at the results file); run.sh numbers them.
fgt_result() { printf '%s\n' "$*" >&5; }

pass() { fgt_result "ok - ${FGT_LABEL}$1"; fgt_log "PASS: $1"; }

# fail NAME [WHY]
fail() {
	FGT_FAILED=1
	fgt_result "not ok - ${FGT_LABEL}$1"
	[[ -n ${2:-} ]] && fgt_result "#   $2"
	fgt_log "FAIL: $1${2:+ -- $2}"
}

# skip NAME REASON
skip() { fgt_result "ok - ${FGT_LABEL}$1 # SKIP $2"; fgt_log "SKIP: $1 ($2)"; }

# Extra information that run.sh prints as a TAP comment (e.g. measured throughput).
note() { fgt_result "#   $*"; fgt_log "NOTE: $*"; }

# check NAME COMMAND... : one check, passed if COMMAND succeeds.
# (Its locals have odd names because COMMAND may be an eval of the caller's variables.)
check() {
	local __check_name=$1
	shift
	fgt_log "check '$__check_name': $*"
	if "$@"; then
		pass "$__check_name"
	else
		fail "$__check_name"
		return 1
	fi
}

# must COMMAND... : a set-up step; if it fails the scenario stops (the EXIT trap cleans up).
must() {
	fgt_log "+ $*"
	"$@" || fgt_abort "set-up step failed: $*"
}

fgt_abort() {
	fail "${FGT_SCENARIO:-scenario}: $1"
	exit 1
}

# ---------------------------------------------------------------------------------------------------------
# Checks and readings shared by the scenarios
# ---------------------------------------------------------------------------------------------------------

# endpoint_is IFNAME PUB EXPECTED: the only peer line of "wg show IFNAME endpoints" is "PUB<TAB>EXPECTED".
endpoint_is() {
	local got
	got=$(wg show "$1" endpoints 2>&1)
	fgt_log "endpoints of $1: $got"
	[[ $got == "$2"$'\t'"$3" ]]
}

# equals WHAT GOT EXPECTED: string comparison that logs both sides.
equals() {
	[[ $2 == "$3" ]] && return 0
	fgt_log "$1: got '$2', expected '$3'"
	return 1
}

# equals_sorted WHAT GOT EXPECTED: like equals, ignoring the order of lines.
equals_sorted() { equals "$1 (sorted)" "$(sort <<<"$2")" "$(sort <<<"$3")"; }

# wg_field IFNAME WHAT: the output of "wg show IFNAME WHAT".
wg_field() { wg show "$1" "$2" 2>&1; }

# The implementations a one-daemon scenario tests (run.sh avoids testing one twice across pairs).
single_targets() { printf '%s' "${FGT_SINGLE_TARGETS-1 2}"; }

# no_single_targets NAME: record a skip when there is nothing left to test.
no_single_targets() {
	[[ -n $(single_targets) ]] && return 1
	skip "$1" "implementation(s) already covered by an earlier pair"
	return 0
}

# wg_rx_bytes IFNAME: bytes received from its first (usually only) peer.
wg_rx_bytes() { wg show "$1" transfer 2>/dev/null | awk -F'\t' 'NR == 1 { print $2 }'; }

# key_hex BASE64KEY: the key in hex.
key_hex() { base64 -d <<<"$1" | od -An -v -tx1 | tr -d ' \n'; }

# first_ferroguard: the number (1 or 2) of the first Ferroguard of the pair; false if there is none (for the
# scenarios that test an option only Ferroguard has).
first_ferroguard() {
	local n
	for n in 1 2; do
		[[ $(impl_kind "$n") == ferroguard ]] && { printf '%s' "$n"; return 0; }
	done
	return 1
}

# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------

fgt_random_id() { od -An -N3 -tx1 /dev/urandom | tr -d ' \n'; }

# fgt_init_names: sets NS0 NS1 NS2 (namespace names) and IF1 IF2 (interface names) from FGT_OWNER/FGT_ID.
fgt_init_names() {
	FGT_OWNER=${FGT_OWNER:-$$}
	FGT_ID=${FGT_ID:-$(fgt_random_id)}
	NS0="$FGT_PREFIX-$FGT_OWNER-$FGT_ID-0"
	NS1="$FGT_PREFIX-$FGT_OWNER-$FGT_ID-1"
	NS2="$FGT_PREFIX-$FGT_OWNER-$FGT_ID-2"
	IF1="$FGT_PREFIX${FGT_ID}a"
	IF2="$FGT_PREFIX${FGT_ID}b"
}

# ifname SUFFIX: another interface name of this scenario (suffix: 1-4 characters).
ifname() { printf '%s%s%s' "$FGT_PREFIX" "$FGT_ID" "$1"; }

sock_path() { printf '%s/%s.sock' "$FGT_SOCK_DIR" "$1"; }

# ---------------------------------------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------------------------------------

FGT_NAMESPACES=()

n0() { fgt_log "ns0: $*"; ip netns exec "$NS0" "$@"; }
n1() { fgt_log "ns1: $*"; ip netns exec "$NS1" "$@"; }
n2() { fgt_log "ns2: $*"; ip netns exec "$NS2" "$@"; }
ip0() { fgt_log "ns0: ip $*"; ip -n "$NS0" "$@"; }
ip1() { fgt_log "ns1: ip $*"; ip -n "$NS1" "$@"; }
ip2() { fgt_log "ns2: ip $*"; ip -n "$NS2" "$@"; }
# wg talks to the daemon over its UNIX socket, which is not namespaced: run it from here.
wgc() { fgt_log "wg $*"; wg "$@"; }

# make_namespace NAME: create it with loopback up, and remember it for clean-up.
make_namespace() {
	FGT_NAMESPACES+=("$1")
	ip netns add "$1" || return 1
	ip -n "$1" link set lo up
}

make_namespaces() {
	must make_namespace "$NS0"
	must make_namespace "$NS1"
	must make_namespace "$NS2"
}

# sysctl_ns NS KEY VALUE (KEY as a /proc/sys path below /proc/sys/)
sysctl_ns() { fgt_log "$1: sysctl $2=$3"; ip netns exec "$1" sh -c 'printf %s "$2" > "/proc/sys/$1"' _ "$2" "$3"; }

# wait_iface_up NS IFNAME: wait (≤ 5 s) until the operstate is not "down" any more (veth peers need a moment).
wait_iface_up() {
	local i state
	for ((i = 0; i < 100; i++)); do
		state=$(ip netns exec "$1" cat "/sys/class/net/$2/operstate" 2>/dev/null)
		[[ $state == up || $state == unknown ]] && return 0
		sleep 0.05
	done
	fgt_log "interface $2 in $1 did not come up (operstate '$state')"
	return 1
}

# ---------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------

FGT_PIDS=()
declare -A FGT_DAEMON_PID=()

# pid_running PID: true while the process exists and is not a zombie.
pid_running() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]]
}

# wait_pid_exit PID SECONDS: true if the process is gone within the time.
wait_pid_exit() {
	local i
	for ((i = 0; i < $2 * 20; i++)); do
		pid_running "$1" || return 0
		sleep 0.05
	done
	! pid_running "$1"
}

# wait_ready_file FILE PID [WHAT]: wait (≤ 5 s) for the ready file a helper creates once it is set up, while
# PID runs; false (and, given WHAT, a log line "WHAT did not start") if it does not appear.
wait_ready_file() {
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -e $1 ]] && return 0
		pid_running "$2" || break
		sleep 0.05
	done
	[[ -n ${3:-} ]] && fgt_log "$3 did not start"
	return 1
}

# kill_pids PID...: SIGTERM, up to 3 s of grace, then SIGKILL. Only ever given ids this suite started.
kill_pids() {
	local pid alive=()
	for pid in "$@"; do
		[[ -n $pid ]] && pid_running "$pid" && kill -TERM "$pid" 2>/dev/null && alive+=("$pid")
	done
	for pid in "${alive[@]}"; do
		wait_pid_exit "$pid" 3 || kill -KILL "$pid" 2>/dev/null
	done
	return 0
}

# impl_command N: the command (words) of implementation N (1 or 2) into the array FGT_CMD.
impl_command() {
	local var="WG_IMPL$1"
	read -ra FGT_CMD <<<"${!var}"
}

# impl_kind N: "wireguard-go" or "ferroguard" (decides the known limitations; override with WG_IMPLn_KIND).
impl_kind() {
	local kind_var="WG_IMPL$1_KIND" impl_var="WG_IMPL$1" first
	if [[ -n ${!kind_var:-} ]]; then
		printf '%s' "${!kind_var}"
		return
	fi
	first=${!impl_var%% *}
	case ${first##*/} in
	wireguard-go*) printf wireguard-go ;;
	*) printf ferroguard ;;
	esac
}

# The scenarios a given implementation is known not to support: prints the reason, or nothing.
# Keep this list short and each entry explained: a skip must never hide a regression.
# Known differences that a scenario file adds for its own checks, keyed "KIND:FEATURE" (set at the top level
# of tests/netns/scenarios/NAME.sh, e.g. FGT_UNSUPPORTED[wireguard-go:some_feature]="why").
declare -gA FGT_UNSUPPORTED=()

unsupported_reason() { # KIND FEATURE
	if [[ -n ${FGT_UNSUPPORTED["$1:$2"]-} ]]; then
		echo "${FGT_UNSUPPORTED["$1:$2"]}"
		return
	fi
	case "$1:$2" in
	wireguard-go:icmp_unreachable)
		echo "wireguard-go drops packets without a peer silently (no ICMP unreachable)" ;;
	wireguard-go:peer_order)
		echo "wireguard-go keeps its peers in a Go map: UAPI get lists them in random order" ;;
	wireguard-go:keeps_port_on_bind_error)
		echo "wireguard-go 0.0.20220316 is left without a bound port when a new listen-port is refused" ;;
	wireguard-go:sticky_v4_source_gone)
		echo "when its sticky IPv4 source address is deleted, Linux 6.x answers sendmsg with ENETUNREACH; Debian's wireguard-go 0.0.20220316 only drops the source on EINVAL, so it never sends again" ;;
	wireguard-go:exact_counters)
		echo "exact byte figures are checked for ferroguard only; wireguard-go gets the ranges of its own netns.sh" ;;
	esac
}

# supported FEATURE CHECKNAME IMPL_NUMBER...: true if every listed implementation supports FEATURE,
# else records a skip for CHECKNAME and returns false.
supported() {
	local feature=$1 name=$2 n reason
	shift 2
	for n in "$@"; do
		reason=$(unsupported_reason "$(impl_kind "$n")" "$feature")
		if [[ -n $reason ]]; then
			skip "$name" "$reason"
			return 1
		fi
	done
	return 0
}

# start_daemon N IFNAME NS: start implementation N in the foreground inside NS, wait (≤ 5 s) for the
# UAPI socket and the interface. Logs go to $FGT_LOGDIR/daemon-IFNAME.log.
start_daemon() {
	local n=$1 ifname=$2 ns=$3 log pid i
	impl_command "$n"
	log="$FGT_LOGDIR/daemon-$ifname.log"
	fgt_log "start impl$n (${FGT_CMD[*]}) for $ifname in $ns, log $log"
	printf '=== %(%H:%M:%S)T start %s -f %s in %s\n' -1 "${FGT_CMD[*]}" "$ifname" "$ns" >>"$log"
	ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${FGT_LOG_LEVEL:-verbose}" \
		"${FGT_CMD[@]}" -f "$ifname" >>"$log" 2>&1 &
	pid=$!
	FGT_PIDS+=("$pid")
	FGT_DAEMON_PID[$ifname]=$pid
	for ((i = 0; i < 100; i++)); do
		if [[ -S $(sock_path "$ifname") ]] && ip -n "$ns" link show dev "$ifname" &>/dev/null; then
			return 0
		fi
		if ! pid_running "$pid"; then
			fgt_log "daemon for $ifname exited during start-up"
			return 1
		fi
		sleep 0.05
	done
	fgt_log "daemon for $ifname: no socket/interface after 5 s"
	return 1
}

# iface_present IFNAME: true if an interface of that name exists in one of our namespaces.
iface_present() {
	local ns
	for ns in "${FGT_NAMESPACES[@]}"; do
		ip -n "$ns" link show dev "$1" &>/dev/null && return 0
	done
	return 1
}

# wait_gone IFNAME SECONDS: true once both the socket and the interface are gone.
wait_gone() {
	local i
	for ((i = 0; i < $2 * 20; i++)); do
		[[ ! -e $(sock_path "$1") ]] && ! iface_present "$1" && return 0
		sleep 0.05
	done
	fgt_log "$1: socket present: $([[ -e $(sock_path "$1") ]] && echo yes || echo no); interface present: $(iface_present "$1" && echo yes || echo no)"
	return 1
}

# daemon_exited IFNAME SECONDS: true if the daemon for IFNAME ends within the time; reaps it.
daemon_exited() {
	local pid=${FGT_DAEMON_PID[$1]:-}
	[[ -n $pid ]] || return 1
	if wait_pid_exit "$pid" "$2"; then
		wait "$pid" 2>/dev/null
		fgt_log "daemon for $1 (pid $pid) exited with status $?"
		return 0
	fi
	fgt_log "daemon for $1 (pid $pid) still running after $2 s"
	return 1
}

# stop_daemon IFNAME: SIGTERM; true if it exits within 5 s and removes its socket and interface.
stop_daemon() {
	local pid=${FGT_DAEMON_PID[$1]:-}
	[[ -n $pid ]] || return 1
	fgt_log "stop daemon for $1 (pid $pid)"
	kill -TERM "$pid" 2>/dev/null
	daemon_exited "$1" 5 && wait_gone "$1" 3
}

# daemons_running: true if a daemon of the scenario still runs.
daemons_running() {
	local ifname
	for ifname in "${!FGT_DAEMON_PID[@]}"; do
		pid_running "${FGT_DAEMON_PID[$ifname]}" && return 0
	done
	return 1
}

# stop_all_daemons: SIGTERM every daemon of the scenario that still runs; true if each one exits within 5 s
# and removes its socket and interface.
stop_all_daemons() {
	local ifname ok=0
	for ifname in "${!FGT_DAEMON_PID[@]}"; do
		pid_running "${FGT_DAEMON_PID[$ifname]}" || continue
		stop_daemon "$ifname" || ok=1
	done
	return $ok
}

# ---------------------------------------------------------------------------------------------------------
# Clean-up
# ---------------------------------------------------------------------------------------------------------

# netns_exists NAME
netns_exists() { ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qxF -- "$1"; }

# delete_namespaces NAME...: stop every process inside, then delete the namespace (interfaces go with it).
delete_namespaces() {
	local ns pids=()
	for ns in "$@"; do
		netns_exists "$ns" || continue
		# shellcheck disable=SC2207
		pids+=($(ip netns pids "$ns" 2>/dev/null))
	done
	kill_pids "${pids[@]}"
	for ns in "$@"; do
		netns_exists "$ns" && ip netns del "$ns" 2>/dev/null
	done
	return 0
}

# socket_connectable PATH: true if something accepts connections on that UNIX socket (within 1 s).
socket_connectable() { python3 "$FGT_NET_PY" connectable "$1" 2>/dev/null; }

# remove_stale_sockets ID_REGEX: remove our sockets that nobody serves any more.
remove_stale_sockets() {
	local sock
	for sock in "$FGT_SOCK_DIR/$FGT_PREFIX"*.sock; do
		[[ -S $sock && ${sock##*/} =~ ^$FGT_PREFIX($1) ]] || continue
		socket_connectable "$sock" || rm -f -- "$sock"
	done
}

# fgt_cleanup: the scenario's EXIT trap. Idempotent.
FGT_CLEANED=0
fgt_cleanup() {
	[[ $FGT_CLEANED == 1 ]] && return 0
	FGT_CLEANED=1
	set +e
	trap - EXIT INT TERM HUP
	fgt_log "clean-up"
	kill_pids "${FGT_PIDS[@]}"
	local pid
	for pid in "${FGT_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
	delete_namespaces "${FGT_NAMESPACES[@]}"
	remove_stale_sockets "$FGT_ID"
	if [[ $FGT_FAILED == 0 ]]; then
		[[ ${FGT_OWN_LOGDIR:-0} == 1 ]] && rm -rf -- "$FGT_LOGDIR"
	else
		local log
		for log in "$FGT_LOGDIR"/daemon-*.log; do
			[[ -f $log ]] || continue
			printf '\n----- last lines of %s -----\n' "$log" >&2
			tail -n 40 "$log" >&2
		done
		printf '\nlogs kept in %s\n' "$FGT_LOGDIR" >&2
	fi
}

# sweep_run OWNER ID: remove everything a finished or killed scenario left behind. Its daemons live in its
# namespaces (every daemon is started inside one), so stopping what runs there stops them too.
sweep_run() {
	local owner=$1 id=$2 ns names=()
	while read -r ns _; do
		[[ $ns == "$FGT_PREFIX-$owner-$id-"* ]] && names+=("$ns")
	done < <(ip netns list 2>/dev/null)
	((${#names[@]})) && delete_namespaces "${names[@]}"
	remove_stale_sockets "$id"
}

# owner_alive OWNER: the pid runs one of our scripts.
owner_alive() {
	[[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'tests/netns/\|netns\.sh\|run\.sh'
}

# sweep_leftovers: remove what earlier runs, killed before they could clean up, left behind.
sweep_leftovers() {
	local ns owner
	while read -r ns _; do
		[[ $ns =~ ^$FGT_PREFIX-([0-9]+)-([0-9a-f]+)-[0-9]+$ ]] || continue
		owner=${BASH_REMATCH[1]}
		# A scenario outlives its run.sh if that was SIGKILLed; it ends itself within its time bound.
		if ! owner_alive "$owner" && ! pgrep -f -- "netns\.sh [a-z_0-9]+ ${BASH_REMATCH[2]}\$" >/dev/null; then
			fgt_log "removing leftover namespace $ns"
			delete_namespaces "$ns"
		fi
	done < <(ip netns list 2>/dev/null)
	# Sockets nobody serves any more (wg(8) would also unlink them on the next "wg show").
	remove_stale_sockets '[0-9a-f]{6}'
}

# ---------------------------------------------------------------------------------------------------------
# Keys and the standard topology
# ---------------------------------------------------------------------------------------------------------

make_keys() {
	key1=$(wg genkey) key2=$(wg genkey) key3=$(wg genkey) key4=$(wg genkey)
	pub1=$(wg pubkey <<<"$key1") pub2=$(wg pubkey <<<"$key2")
	pub3=$(wg pubkey <<<"$key3") pub4=$(wg pubkey <<<"$key4")
	psk=$(wg genpsk)
	[[ -n $key1 && -n $pub4 && -n $psk ]]
}

# configure_peers: addresses and keys of the two tunnel ends (the kernel's configure_peers).
# IF1 must be in NS1 and IF2 in NS2. Listen ports 1 and 2 live in whichever namespace the daemons started.
configure_peers() {
	must ip1 addr add 192.168.241.1/24 dev "$IF1"
	must ip1 addr add fd00::1/112 dev "$IF1"
	must ip2 addr add 192.168.241.2/24 dev "$IF2"
	must ip2 addr add fd00::2/112 dev "$IF2"
	must wgc set "$IF1" private-key <(echo "$key1") listen-port 1 \
		peer "$pub2" preshared-key <(echo "$psk") allowed-ips 192.168.241.2/32,fd00::2/128
	must wgc set "$IF2" private-key <(echo "$key2") listen-port 2 \
		peer "$pub1" preshared-key <(echo "$psk") allowed-ips 192.168.241.1/32,fd00::1/128
	must ip1 link set up dev "$IF1"
	must ip2 link set up dev "$IF2"
}

# topo_loopback: the kernel's first topology. Both daemons start in NS0 (their UDP sockets stay there, on
# loopback); the interfaces move to NS1 and NS2.
topo_loopback() {
	make_namespaces
	must start_daemon 1 "$IF1" "$NS0"
	must ip0 link set "$IF1" netns "$NS1"
	must start_daemon 2 "$IF2" "$NS0"
	must ip0 link set "$IF2" netns "$NS2"
	configure_peers
}

endpoints_v4() {
	must wgc set "$IF1" peer "$pub2" endpoint 127.0.0.1:2
	must wgc set "$IF2" peer "$pub1" endpoint 127.0.0.1:1
}

endpoints_v6() {
	must wgc set "$IF1" peer "$pub2" endpoint '[::1]:2'
	must wgc set "$IF2" peer "$pub1" endpoint '[::1]:1'
}

# nat_links: the links and routes of the NAT topology below (ns1's client side 192.168.1.0/24 routed by ns0 to
# ns2's 10.0.0.0/24), without the daemons and without the NAT rule.
nat_links() {
	must ip0 link add vethrc type veth peer name vethc
	must ip0 link add vethrs type veth peer name veths
	must ip0 link set vethc netns "$NS1"
	must ip0 link set veths netns "$NS2"
	must ip0 link set vethrc up
	must ip0 link set vethrs up
	must ip0 addr add 192.168.1.1/24 dev vethrc
	must ip0 addr add 10.0.0.1/24 dev vethrs
	must ip1 addr add 192.168.1.100/24 dev vethc
	must ip1 link set vethc up
	must ip1 route add default via 192.168.1.1
	must ip2 addr add 10.0.0.100/24 dev veths
	must ip2 link set veths up
	must wait_iface_up "$NS0" vethrc
	must wait_iface_up "$NS0" vethrs
	must wait_iface_up "$NS1" vethc
	must wait_iface_up "$NS2" veths
	must sysctl_ns "$NS0" net/ipv4/ip_forward 1
}

# snat NS MATCH ADDRESS: an nftables table fgt_nat in NS that rewrites the source of what MATCH (nft syntax)
# matches to ADDRESS on the way out.
snat() {
	in_ns "$1" nft -f - <<-EOF
		table ip fgt_nat {
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				$2 snat to $3
			}
		}
	EOF
}

# NAT topology of the kernel script (daemons in ns1/ns2, their sockets there; ns0 routes and SNATs):
#   ns1: IF1 192.168.241.1, vethc 192.168.1.100 -> ns0: vethrc 192.168.1.1 | vethrs 10.0.0.1 -> ns2: veths
#   10.0.0.100, IF2 192.168.241.2
topo_nat() {
	make_namespaces
	must start_daemon 1 "$IF1" "$NS1"
	must start_daemon 2 "$IF2" "$NS2"
	configure_peers
	nat_links
	must snat "$NS0" "ip saddr 192.168.1.0/24 ip daddr 10.0.0.0/24" 10.0.0.1
	# Short UDP conntrack timeouts make the NAT mapping expire unless keepalives refresh it.
	must sysctl_ns "$NS0" net/netfilter/nf_conntrack_udp_timeout 2
	must sysctl_ns "$NS0" net/netfilter/nf_conntrack_udp_timeout_stream 2
}

# Veth topology of the sticky-socket tests: ns1 veth1 <-> ns2 veth2, daemons in ns1/ns2.
topo_veth() {
	make_namespaces
	must start_daemon 1 "$IF1" "$NS1"
	must start_daemon 2 "$IF2" "$NS2"
	configure_peers
	must ip1 link add veth1 type veth peer name veth2
	must ip1 link set veth2 netns "$NS2"
	must sysctl_ns "$NS1" net/ipv6/conf/all/accept_dad 0
	must sysctl_ns "$NS2" net/ipv6/conf/all/accept_dad 0
	must sysctl_ns "$NS1" net/ipv6/conf/veth1/accept_dad 0
	must sysctl_ns "$NS2" net/ipv6/conf/veth2/accept_dad 0
	must sysctl_ns "$NS1" net/ipv4/conf/veth1/promote_secondaries 1
}

# veths_up: veth1 (ns1) and veth2 (ns2), as topo_veth names them, up, and waited for.
veths_up() {
	must ip1 link set veth1 up
	must ip2 link set veth2 up
	must wait_iface_up "$NS1" veth1
	must wait_iface_up "$NS2" veth2
}

# ---------------------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------------------

# in_ns NS COMMAND...
in_ns() { local ns=$1; shift; fgt_log "$ns: $*"; ip netns exec "$ns" "$@"; }

# ping_all NS DEST COUNT [extra ping args]: true if every one of COUNT flood pings is answered, in one of
# two rounds. (The kernel's script passes with any answer; a whole second round is allowed because a flood
# ping can be lost right after the previous test's UDP flood filled the queues.)
ping_all() {
	local ns=$1 dest=$2 count=$3 out round
	shift 3
	for round in 1 2; do
		out=$(in_ns "$ns" timeout --foreground 20 ping -n -q -f -c "$count" -W 1 "$@" "$dest" 2>&1)
		fgt_log "$out"
		[[ $out =~ (^|[[:space:]])$count\ packets\ transmitted,\ $count\ received, ]] && return 0
		fgt_log "ping_all: round $round incomplete"
	done
	return 1
}

# ping_once NS DEST: one ping, one second to answer (the kernel's "ping -W 1 -c 1").
ping_once() {
	local out
	out=$(in_ns "$1" timeout --foreground 10 ping -n -c 1 -W 1 "$2" 2>&1)
	fgt_log "$out"
	[[ $out =~ (^|[[:space:]])1\ packets\ transmitted,\ 1\ received, ]]
}

# ping_retry NS DEST: ping_once, retried up to 3 times. Used only where the kernel's own script allows more
# than one attempt (a handshake after a roam or a key change may need a retransmission on a busy machine).
ping_retry() {
	local i
	for i in 1 2 3; do
		ping_once "$1" "$2" && return 0
	done
	return 1
}

# wait_listening NS PROTO PORT: wait (≤ 5 s) for a listening socket (PROTO: t or u).
wait_listening() {
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -n $(ss -N "$1" -"$2"lnH "sport = :$3" 2>/dev/null) ]] && return 0
		sleep 0.05
	done
	fgt_log "nothing listens on $2 port $3 in $1"
	return 1
}

# iperf_throughput JSONFILE: prints bits/s received (TCP) or the UDP figure; false if none or an error.
iperf_throughput() { python3 "$FGT_NET_PY" iperf-summary "$1"; }

FGT_IPERF_TIME=${FGT_IPERF_TIME:-2}

# iperf_pair SERVER_NS SERVER_ADDR CLIENT_NS PORT JSONFILE [client args]: one iperf3 run; server is one-shot.
iperf_pair() {
	local sns=$1 addr=$2 cns=$3 port=$4 json=$5 spid rc
	shift 5
	in_ns "$sns" iperf3 -s -1 -B "$addr" -p "$port" >>"$FGT_LOGDIR/iperf-server.log" 2>&1 &
	spid=$!
	FGT_PIDS+=("$spid")
	wait_listening "$sns" t "$port" || { kill_pids "$spid"; return 1; }
	in_ns "$cns" timeout --foreground $((FGT_IPERF_TIME + 25)) iperf3 -Z -J -c "$addr" -p "$port" -t "$FGT_IPERF_TIME" "$@" \
		>"$json" 2>>"$FGT_LOGDIR/iperf-client.log"
	rc=$?
	wait_pid_exit "$spid" 5 || kill_pids "$spid"
	wait "$spid" 2>/dev/null
	return $rc
}

# iperf_check NAME SERVER_NS SERVER_ADDR CLIENT_NS [client args]: a check with the figure as a note.
iperf_check() {
	local name=$1 sns=$2 addr=$3 cns=$4 json figure
	shift 4
	json=$(mktemp "$FGT_LOGDIR/iperf-XXXXXX.json")
	iperf_pair "$sns" "$addr" "$cns" 5201 "$json" "$@"
	if figure=$(iperf_throughput "$json"); then
		pass "$name"
		note "$figure"
	else
		fail "$name" "$figure"
		tail -n 20 "$json" >&2
	fi
}

# iperf_parallel NAME SERVER_NS SERVER_ADDR CLIENT_NS STREAMS: that many iperf3 pairs at once (the kernel's
# "TCP over IPv4, in parallel"); every one must move data.
iperf_parallel() {
	local name=$1 sns=$2 addr=$3 cns=$4 streams=$5 i spids=() cpids=() json ok=1 figures=() figure
	for ((i = 0; i < streams; i++)); do
		in_ns "$sns" iperf3 -s -1 -B "$addr" -p $((5200 + i)) >>"$FGT_LOGDIR/iperf-server.log" 2>&1 &
		spids+=($!)
		FGT_PIDS+=($!)
	done
	for ((i = 0; i < streams; i++)); do
		wait_listening "$sns" t $((5200 + i)) || ok=0
	done
	for ((i = 0; i < streams; i++)); do
		in_ns "$cns" timeout --foreground $((FGT_IPERF_TIME + 25)) iperf3 -Z -J -c "$addr" -p $((5200 + i)) \
			-t "$FGT_IPERF_TIME" >"$FGT_LOGDIR/iperf-par-$i.json" 2>>"$FGT_LOGDIR/iperf-client.log" &
		cpids+=($!)
	done
	for i in "${cpids[@]}"; do wait "$i"; done
	for i in "${spids[@]}"; do wait_pid_exit "$i" 5 || kill_pids "$i"; wait "$i" 2>/dev/null; done
	for ((i = 0; i < streams; i++)); do
		figure=$(iperf_throughput "$FGT_LOGDIR/iperf-par-$i.json") || ok=0
		figures+=("$figure")
	done
	if ((ok)); then pass "$name"; note "${figures[*]}"; else fail "$name" "${figures[*]}"; fi
}

# traffic_tests LABEL [full|light]: the kernel's tests(): pings both ways over v4 and v6, TCP and UDP iperf3
# over v4 and v6 and (full) both directions and 4 parallel TCP streams.
traffic_tests() {
	local label=$1 mode=${2:-full}
	check "$label: ping v4 ns2 -> ns1" ping_all "$NS2" 192.168.241.1 10
	check "$label: ping v4 ns1 -> ns2" ping_all "$NS1" 192.168.241.2 10
	check "$label: ping v6 ns2 -> ns1" ping_all "$NS2" fd00::1 10
	check "$label: ping v6 ns1 -> ns2" ping_all "$NS1" fd00::2 10
	iperf_check "$label: iperf3 TCP v4 ns1 -> ns2" "$NS2" 192.168.241.2 "$NS1"
	iperf_check "$label: iperf3 TCP v6 ns2 -> ns1" "$NS1" fd00::1 "$NS2"
	if [[ $mode == full ]]; then
		iperf_check "$label: iperf3 TCP v4 ns2 -> ns1 (reverse)" "$NS2" 192.168.241.2 "$NS1" -R
		iperf_check "$label: iperf3 TCP v6 ns1 -> ns2 (reverse)" "$NS1" fd00::1 "$NS2" -R
	fi
	iperf_check "$label: iperf3 UDP v4 ns2 -> ns1" "$NS1" 192.168.241.1 "$NS2" -u -b "${FGT_UDP_RATE:-0}"
	iperf_check "$label: iperf3 UDP v6 ns1 -> ns2" "$NS2" fd00::2 "$NS1" -u -b "${FGT_UDP_RATE:-0}"
	if [[ $mode == full ]]; then
		iperf_parallel "$label: iperf3 TCP v4 4 parallel streams ns1 -> ns2" "$NS2" 192.168.241.2 "$NS1" 4
	fi
}

# ---------------------------------------------------------------------------------------------------------
# UDP probes (fgnet.py)
# ---------------------------------------------------------------------------------------------------------

# udp_listen_start NS ADDR PORT SECONDS FIRST: starts a counting listener; sets UDP_LISTENER_PID and
# UDP_LISTENER_OUT; waits until it is bound.
udp_listen_start() {
	local ns=$1 ready
	ready=$(mktemp -u "$FGT_LOGDIR/udp-ready-XXXXXX")
	UDP_LISTENER_OUT=$(mktemp "$FGT_LOGDIR/udp-count-XXXXXX")
	in_ns "$ns" timeout --foreground 30 python3 "$FGT_NET_PY" udp-listen "$2" "$3" "$4" "$ready" "$5" \
		>"$UDP_LISTENER_OUT" &
	UDP_LISTENER_PID=$!
	FGT_PIDS+=("$UDP_LISTENER_PID")
	wait_ready_file "$ready" "$UDP_LISTENER_PID" "UDP listener"
}

# udp_listen_result: waits for the listener (≤ its time), sets UDP_RECEIVED to the number of datagrams.
# (Not a command substitution: only this shell can wait for its child.)
udp_listen_result() {
	wait "$UDP_LISTENER_PID" 2>/dev/null
	UDP_RECEIVED=$(<"$UDP_LISTENER_OUT")
	UDP_RECEIVED=${UDP_RECEIVED:-none}
}

# relay_start PY ARGS...: a scenario's relay between two daemons (an fgnet.PortPairRelay), started in ns0 as
# "python3 PY relay ARGS... READYFILE" (≤ 140 s, stderr to relay.log); sets RELAY_PID; true once it is ready.
relay_start() {
	local py=$1 ready
	shift
	ready=$(mktemp -u "$FGT_LOGDIR/relay-ready-XXXXXX")
	in_ns "$NS0" timeout --foreground 140 python3 "$py" relay "$@" "$ready" 2>>"$FGT_LOGDIR/relay.log" &
	RELAY_PID=$!
	FGT_PIDS+=("$RELAY_PID")
	wait_ready_file "$ready" "$RELAY_PID" relay
}

# relay_ctrl CTRL_PORT COMMAND: one command to the relay listening for them on ns0's 127.0.0.1:CTRL_PORT
# (≤ 5 s); prints its answer, false if that is an error.
relay_ctrl() { in_ns "$NS0" timeout --foreground 5 python3 "$FGT_NET_PY" relay-ctrl "$1" "$2"; }

# make_stale_socket PATH: a UNIX socket file that nobody serves.
make_stale_socket() { python3 "$FGT_NET_PY" stale-socket "$1"; }

# udp_send NS ADDR PORT PAYLOAD: one datagram from NS.
udp_send() { in_ns "$1" python3 "$FGT_NET_PY" udp-send "$2" "$3" "$4"; }
