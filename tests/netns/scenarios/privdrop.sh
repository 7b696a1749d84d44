# shellcheck shell=bash
# shellcheck disable=SC2154 # key1..key4, pub1..pub4 and psk are set by make_keys (lib.sh)
# shellcheck disable=SC2016 # check ... eval '...' expands at the check, as in the other scenarios
# Scenario privdrop: Ferroguard started with "--user nobody" (its own option; wireguard-go has none, so the
# scenario is skipped for a pair without Ferroguard). The first Ferroguard of the pair drops privileges;
# the other implementation of the pair is its peer, unchanged. Loopback topology (lib.sh's topo_loopback),
# so the listen ports 1 and 2 are set after the drop.
#
#   1. an unknown user is refused at once with one line, leaving no socket and no interface;
#   2. /proc/PID/status of the daemon process (the child of the started process): Uid and Gid all nobody's,
#      Groups only nobody's group, CapEff = CapPrm = CapBnd = CAP_NET_ADMIN + CAP_NET_BIND_SERVICE
#      (0x1400), CapInh = CapAmb = 0, NoNewPrivs 1; the started process (the cleanup parent) keeps uid 0
#      with CAP_KILL only and no descriptor but 0-2;
#   3. traffic both ways, v4 and v6;
#   4. root's wg still configures it: the listen port below 1024 set after the drop, a change to a high
#      port and to another low port (the new sockets are nobody's and carry the fwmark), an fwmark change
#      (SO_MARK, read back with ss), setconf of the showconf output (unchanged), traffic afterwards;
#   5. the socket stays root's and mode 0600: wg show as nobody fails with "permission denied"; nobody
#      cannot list the daemon's descriptors (/proc/PID/fd: the process is not dumpable);
#   6. SIGTERM to the started process: exit status 0, the daemon process gone, socket and interface
#      removed;
#   7. detached (no -f) with FERROGUARD_USER: the start exits 0 once set up, the daemon runs as nobody;
#      "ip link del" ends it, and its cleanup parent removes the socket.

PRIVDROP_USER=nobody
# CAP_NET_ADMIN (12) and CAP_NET_BIND_SERVICE (10), as /proc/PID/status prints them.
PRIVDROP_KEPT_CAPS=0000000000001400
PRIVDROP_PARENT_CAPS=0000000000000020

# privdrop_status PID FIELD: the value of FIELD in /proc/PID/status (tabs and trailing blanks squeezed).
privdrop_status() {
	awk -v f="$2:" '$1 == f { $1 = ""; sub(/^ +/, ""); print }' "/proc/$1/status" 2>/dev/null
}

# privdrop_child PID: the only child of PID.
privdrop_child() {
	local children
	children=$(cat "/proc/$1/task/$1/children" 2>/dev/null)
	children=${children% }
	[[ -n $children && $children != *" "* ]] && printf '%s' "$children"
}

# privdrop_unknown_user N: implementation N with an unknown user exits 1 within 5 s with a one-line
# message and creates neither the socket nor the interface.
privdrop_unknown_user() {
	local n=$1 ifname out rc
	ifname=$(ifname "X$n")
	impl_command "$n"
	out=$(ip netns exec "$NS0" timeout --foreground 5 "${FGT_CMD[@]}" -f --user fg-no-such-user "$ifname" 2>&1)
	rc=$?
	fgt_log "unknown user: status $rc: $out"
	((rc == 1)) && [[ $(wc -l <<<"$out") == 1 && $out == *"unknown user 'fg-no-such-user'"* ]] &&
		[[ ! -e $(sock_path "$ifname") ]] && ! ip -n "$NS0" link show dev "$ifname" &>/dev/null
}

# privdrop_credentials PID: the daemon process runs as nobody with the kept capabilities only.
privdrop_credentials() {
	local pid=$1 uid gid
	uid=$(id -u "$PRIVDROP_USER") gid=$(id -g "$PRIVDROP_USER")
	equals Uid "$(privdrop_status "$pid" Uid)" "$uid $uid $uid $uid" &&
		equals Gid "$(privdrop_status "$pid" Gid)" "$gid $gid $gid $gid" &&
		equals Groups "$(privdrop_status "$pid" Groups)" "$gid"
}

privdrop_capabilities() {
	local pid=$1 field
	for field in CapEff CapPrm CapBnd; do
		equals "$field" "$(privdrop_status "$pid" "$field")" "$PRIVDROP_KEPT_CAPS" || return 1
	done
	equals CapInh "$(privdrop_status "$pid" CapInh)" 0000000000000000 &&
		equals CapAmb "$(privdrop_status "$pid" CapAmb)" 0000000000000000 &&
		equals NoNewPrivs "$(privdrop_status "$pid" NoNewPrivs)" 1
}

# privdrop_cleanup_parent PID: uid 0, CAP_KILL only, descriptors 0-2 only.
privdrop_cleanup_parent() {
	local pid=$1 fds
	fds=$(find "/proc/$pid/fd" -mindepth 1 -printf '%f\n' 2>&1 | sort -n | tr '\n' ' ')
	equals "parent Uid" "$(privdrop_status "$pid" Uid)" "0 0 0 0" &&
		equals "parent CapEff" "$(privdrop_status "$pid" CapEff)" "$PRIVDROP_PARENT_CAPS" &&
		equals "parent CapPrm" "$(privdrop_status "$pid" CapPrm)" "$PRIVDROP_PARENT_CAPS" &&
		equals "parent descriptors" "$fds" "0 1 2 "
}

# privdrop_sockets PORT MARK: the daemon's UDP sockets on PORT in ns0 (v4 and v6) belong to nobody and
# carry the fwmark MARK (ss -e prints "uid:N" and "fwmark:0x..").
privdrop_sockets() {
	local port=$1 mark=$2 lines uid
	uid=$(id -u "$PRIVDROP_USER")
	lines=$(ss -N "$NS0" -uanH -e "sport = :$port" 2>&1)
	fgt_log "sockets on port $port: $lines"
	[[ $(grep -c "uid:$uid .*fwmark:$mark " <<<"$lines") == 2 ]]
}

# privdrop_port IFNAME PORT: wg set listen-port PORT and read it back.
privdrop_port() {
	wgc set "$1" listen-port "$2" && equals listen-port "$(wg_field "$1" listen-port)" "$2"
}

# privdrop_setconf IFNAME: setconf with the current showconf leaves it unchanged.
privdrop_setconf() {
	local before after
	before=$(wg showconf "$1" 2>&1) || return 1
	wg setconf "$1" <(printf '%s\n' "$before") || return 1
	after=$(wg showconf "$1" 2>&1)
	# Not through equals: the configuration holds keys.
	[[ -n $before && $after == "$before" ]]
}

# privdrop_traffic LABEL NS_DROPPED NS_OTHER ADDR_OTHER ADDR_DROPPED: pings both ways.
privdrop_traffic() {
	check "$1: ping from the dropped daemon's side" ping_all "$2" "$4" 10
	check "$1: ping to the dropped daemon's side" ping_all "$3" "$5" 10
}

# privdrop_stop PID IFNAME WORKER: SIGTERM to the started process; exit status 0 and everything removed.
privdrop_stop() {
	local pid=$1 ifname=$2 worker=$3 rc
	kill -TERM "$pid" 2>/dev/null
	wait_pid_exit "$pid" 5 || { fgt_log "still running after 5 s"; return 1; }
	wait "$pid" 2>/dev/null
	rc=$?
	fgt_log "exit status $rc"
	((rc == 0)) && ! pid_running "$worker" && wait_gone "$ifname" 3
}

# privdrop_detached COMMAND: the command (without --user) started without -f, the user from
# FERROGUARD_USER.
privdrop_detached() {
	local ifname parent worker rc cmd
	read -ra cmd <<<"$1"
	ifname=$(ifname D)
	ip netns exec "$NS0" env FERROGUARD_USER="$PRIVDROP_USER" timeout --foreground 10 "${cmd[@]}" "$ifname" \
		>>"$FGT_LOGDIR/daemon-$ifname.log" 2>&1
	rc=$?
	# The cleanup parent is the one of the two processes that kept uid 0.
	parent=$(pgrep -u 0 -xf -- "${cmd[*]} $ifname" | head -n 1)
	[[ -n $parent ]] && FGT_PIDS+=("$parent")
	worker=$([[ -n $parent ]] && privdrop_child "$parent")
	fgt_log "detached: status $rc, cleanup parent ${parent:-none}, daemon ${worker:-none}"
	((rc == 0)) && [[ -n $worker && -S $(sock_path "$ifname") ]] || return 1
	privdrop_credentials "$worker" || return 1
	ip -n "$NS0" link del dev "$ifname" || return 1
	wait_pid_exit "$parent" 5 && ! pid_running "$worker" && wait_gone "$ifname" 3
}

scenario_privdrop() {
	local n ifname parent worker ns_dropped ns_other addr_dropped addr_other
	if ! n=$(first_ferroguard); then
		skip "privdrop" "--user is Ferroguard's own option (wireguard-go has none)"
		return
	fi
	# topo_loopback starts implementation n with --user (start_daemon reads WG_IMPLn through
	# impl_command; these locals are seen there by dynamic scope).
	local WG_IMPL1=$WG_IMPL1 WG_IMPL2=$WG_IMPL2 impl_var="WG_IMPL$n" plain_command
	plain_command=${!impl_var}
	printf -v "$impl_var" '%s --user %s' "${!impl_var}" "$PRIVDROP_USER"
	topo_loopback
	must endpoints_v4
	check "privdrop: an unknown user is refused with one line, nothing created" privdrop_unknown_user "$n"

	ifname=$IF1 ns_dropped=$NS1 ns_other=$NS2 addr_dropped=192.168.241.1 addr_other=192.168.241.2
	((n == 2)) && ifname=$IF2 ns_dropped=$NS2 ns_other=$NS1 addr_dropped=192.168.241.2 addr_other=192.168.241.1
	parent=${FGT_DAEMON_PID[$ifname]}
	worker=$(privdrop_child "$parent")
	fgt_log "started process $parent, daemon process ${worker:-none}"
	check "privdrop: the started process has one child, the daemon" test -n "$worker"
	check "privdrop: the daemon runs as $PRIVDROP_USER (uid, gid, groups)" privdrop_credentials "$worker"
	check "privdrop: only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE kept, no_new_privs set" \
		privdrop_capabilities "$worker"
	check "privdrop: the cleanup parent keeps uid 0 with CAP_KILL only and no descriptor" \
		privdrop_cleanup_parent "$parent"

	privdrop_traffic "privdrop" "$ns_dropped" "$ns_other" "$addr_other" "$addr_dropped"
	check "privdrop: listen port $n (below 1024) set after the drop" \
		equals listen-port "$(wg_field "$ifname" listen-port)" "$n"
	check "privdrop: wg set fwmark after the drop" \
		eval 'wgc set "$ifname" fwmark 0x51820 && equals fwmark "$(wg_field "$ifname" fwmark)" 0x51820'
	check "privdrop: the sockets carry the fwmark (SO_MARK)" privdrop_sockets "$n" 0x51820
	check "privdrop: wg set listen-port 40000" privdrop_port "$ifname" 40000
	check "privdrop: the new sockets are $PRIVDROP_USER's and keep the fwmark" privdrop_sockets 40000 0x51820
	check "privdrop: wg set listen-port 3 (below 1024 again)" privdrop_port "$ifname" 3
	check "privdrop: wg setconf of the showconf output changes nothing" privdrop_setconf "$ifname"
	check "privdrop: wg show all dump lists the interface" eval 'wg show all dump | grep -q "^$ifname	"'
	privdrop_traffic "privdrop after reconfiguration" "$ns_dropped" "$ns_other" "$addr_other" "$addr_dropped"

	local sock out rc
	sock=$(sock_path "$ifname")
	check "privdrop: the socket is still root's with mode 0600" \
		equals socket "$(stat -c '%U %a' "$sock")" "root 600"
	out=$(setpriv --reuid="$PRIVDROP_USER" --regid="$(id -g "$PRIVDROP_USER")" --clear-groups \
		timeout 5 wg show "$ifname" 2>&1)
	rc=$?
	fgt_log "wg show as $PRIVDROP_USER: status $rc: $out"
	check "privdrop: wg show as $PRIVDROP_USER fails with permission denied" \
		eval '((rc != 0)) && [[ ${out,,} == *"permission denied"* ]]'
	check "privdrop: $PRIVDROP_USER cannot list the daemon's descriptors (not dumpable)" \
		eval '! setpriv --reuid="$PRIVDROP_USER" --regid="$(id -g "$PRIVDROP_USER")" --clear-groups ls "/proc/$worker/fd" >/dev/null 2>&1'

	check "privdrop: SIGTERM: exit status 0, socket and interface removed" \
		privdrop_stop "$parent" "$ifname" "$worker"
	check "privdrop: detached with FERROGUARD_USER; ip link del ends it and removes the socket" \
		privdrop_detached "$plain_command"
}
