# shellcheck shell=bash
# shellcheck disable=SC2154 # key1..key4, pub1..pub4 and psk are set by make_keys (lib.sh)
# Scenario handed_fds: the daemon started on descriptors handed in (scenarios/handed_fds.py opens them and
# execs the daemon), the way apps, privileged helpers and systemd start it:
#   - IF1: WG_TUN_FD (a plain TUN: IFF_TUN | IFF_NO_PI) and WG_UAPI_FD (a listening socket at the usual
#     path), as wireguard-go takes them;
#   - IF2: WG_TUN_FD with IFF_VNET_HDR (the daemon must use the header and its offloads) and the
#     configuration socket by systemd's socket-activation protocol (descriptor 3, LISTEN_FDS, LISTEN_PID).
# Loopback topology as topo_loopback (daemons in ns0, interfaces moved to ns1 and ns2). Checks: wg
# configures both through the handed sockets, traffic both ways (v4, v6, and a TCP transfer through the
# offload path), a descriptor that is not a TUN is refused with one line, and SIGTERM stops each daemon
# with its interface gone (the handed socket file is left to whoever made it, and removed here).
# The socket-activation protocol is spoken by the helper rather than by systemd-socket-activate, which
# starts its program only on the first connection (the protocol, descriptor 3 and the two variables with
# our pid, is the same). Ferroguard only: wireguard-go has WG_TUN_FD/WG_UAPI_FD but not socket activation, and this scenario
# tests Ferroguard's handling of both.

HANDED_PY="$(dirname "$FGT_NET_PY")/scenarios/handed_fds.py"

# handed_start N IFNAME HELPER_OPTIONS...: implementation N started in ns0 through the helper; waits
# (≤ 5 s) for the interface and for the socket to accept a connection.
handed_start() {
	local n=$1 ifname=$2 log pid i
	shift 2
	impl_command "$n"
	log="$FGT_LOGDIR/daemon-$ifname.log"
	fgt_log "start ${FGT_CMD[*]} -f $ifname in $NS0 with handed descriptors: $*"
	ip netns exec "$NS0" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${FGT_LOG_LEVEL:-verbose}" \
		python3 "$HANDED_PY" "$@" -- "${FGT_CMD[@]}" -f "$ifname" >>"$log" 2>&1 &
	pid=$!
	FGT_PIDS+=("$pid")
	FGT_DAEMON_PID[$ifname]=$pid
	for ((i = 0; i < 100; i++)); do
		if ip -n "$NS0" link show dev "$ifname" &>/dev/null && socket_connectable "$(sock_path "$ifname")"; then
			return 0
		fi
		pid_running "$pid" || { fgt_log "daemon for $ifname exited during start-up"; return 1; }
		sleep 0.05
	done
	fgt_log "daemon for $ifname: not up after 5 s"
	return 1
}

# handed_refused N: a descriptor that is not a TUN device (/dev/null as WG_TUN_FD) fails the start with
# status 1 and one line naming it, leaving no socket behind.
handed_refused() {
	local n=$1 ifname out rc
	ifname=$(ifname X)
	impl_command "$n"
	out=$(ip netns exec "$NS0" env WG_TUN_FD=9 timeout --foreground 5 "${FGT_CMD[@]}" -f "$ifname" 9</dev/null 2>&1)
	rc=$?
	fgt_log "WG_TUN_FD=/dev/null: status $rc: $out"
	((rc == 1)) && [[ $(wc -l <<<"$out") == 1 && $out == *"not an attached TUN descriptor"* ]] &&
		[[ ! -e $(sock_path "$ifname") ]]
}

# handed_logged IFNAME: the daemon logged that it took both descriptors (and opened neither itself).
handed_logged() {
	local log="$FGT_LOGDIR/daemon-$1.log"
	grep -q "TUN device $1 handed in" "$log" && grep -q 'configuration socket handed in' "$log"
}

# handed_offloads LOG: the daemon logged that the handed TUN runs with the virtio-net header.
handed_offloads() { grep -q 'handed in, offloads TunOffloads { vnet_hdr: true' "$1"; }

# handed_stop IFNAME: SIGTERM ends the daemon and its interface; its handed socket file is removed here.
handed_stop() {
	kill -TERM "${FGT_DAEMON_PID[$1]}" 2>/dev/null
	daemon_exited "$1" 5 || return 1
	rm -f -- "$(sock_path "$1")"
	wait_gone "$1" 3
}

scenario_handed_fds() {
	local n
	if ! n=$(first_ferroguard); then
		skip "handed_fds" "tests Ferroguard's handling of handed descriptors (no Ferroguard in the pair)"
		return
	fi
	# Both ends are the pair's first Ferroguard, each started one of the two ways (handed_start reads
	# WG_IMPL1 through impl_command; this local is seen there by dynamic scope).
	local impl_var="WG_IMPL$n"
	local WG_IMPL1=${!impl_var}
	make_namespaces
	check "handed_fds: WG_TUN_FD and WG_UAPI_FD: started, wg reaches it" \
		handed_start 1 "$IF1" --tun "$IF1" --uapi "$(sock_path "$IF1")"
	check "handed_fds: WG_TUN_FD with IFF_VNET_HDR, socket activation: started, wg reaches it" \
		handed_start 1 "$IF2" --tun "$IF2" --vnet --systemd "$(sock_path "$IF2")"
	check "handed_fds: both daemons took the handed descriptors" eval 'handed_logged "$IF1" && handed_logged "$IF2"'
	check "handed_fds: the vnet-header TUN runs with the header and offloads" \
		handed_offloads "$FGT_LOGDIR/daemon-$IF2.log"
	must ip0 link set "$IF1" netns "$NS1"
	must ip0 link set "$IF2" netns "$NS2"
	configure_peers
	must endpoints_v4
	check "handed_fds: ping v4 both ways" eval 'ping_all "$NS1" 192.168.241.2 5 && ping_all "$NS2" 192.168.241.1 5'
	check "handed_fds: ping v6 both ways" eval 'ping_all "$NS1" fd00::2 5 && ping_all "$NS2" fd00::1 5'
	check "handed_fds: wg show through each handed socket has the handshake" \
		eval '[[ $(wg_field "$IF1" latest-handshakes) != *"	0" && $(wg_field "$IF2" latest-handshakes) != *"	0" ]]'
	iperf_check "handed_fds: TCP through the vnet-header TUN" "$NS2" 192.168.241.2 "$NS1"
	check "handed_fds: a descriptor that is not a TUN is refused with one line" handed_refused 1
	check "handed_fds: SIGTERM stops the WG_UAPI_FD daemon and its interface" handed_stop "$IF1"
	check "handed_fds: SIGTERM stops the socket-activated daemon and its interface" handed_stop "$IF2"
}
