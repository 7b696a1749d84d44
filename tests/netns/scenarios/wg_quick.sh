# shellcheck shell=bash
# shellcheck disable=SC2154 # key1..key4, pub1..pub4 and psk are set by make_keys (lib.sh)
# Scenario wg_quick: the implementation driven by wg-quick(8), as users run it.
#
# wg-quick first tries "ip link add IFNAME type wireguard", which fails without the kernel module, and then
# starts $WG_QUICK_USERSPACE_IMPLEMENTATION IFNAME: the implementation must detach (no -f) once its TUN
# device and configuration socket exist, so that wg-quick can go on with "wg setconf", addresses, MTU,
# routes and hooks. wg-quick runs inside the namespace that should hold the interface, so the daemon and
# its UDP sockets live there too.
#
# Topology (both cases): ns1 veth1 10.0.0.1/24 fd99::1/64 <-> ns2 veth2 10.0.0.2/24 fd99::2/64.
#   Case 1 "plain": a real configuration file on each side (Address v4+v6, MTU, ListenPort, PostUp and
#     PostDown hooks, a peer with PresharedKey, Endpoint (v4 one way, v6 the other), AllowedIPs,
#     PersistentKeepalive); then "wg-quick down" must remove the interface and end the daemon.
#   Case 2 "default route": ns1 has "AllowedIPs = 0.0.0.0/0, ::/0", so wg-quick sets the fwmark, routes
#     everything through table 51820 ("not fwmark" and "suppress_prefixlength 0" rules) and adds its nft
#     tables (src_valid_mark, conntrack mark). ns2's endpoint 10.9.9.9 is reachable from ns1 only through
#     the main table's default route, so the daemon's own UDP reaches it only if it marks its sockets; ns1
#     uses strict reverse-path filtering, which passes the replies only thanks to wg-quick's nft rules.
#     ns2 has no Endpoint for ns1: it must learn 10.0.0.1 from ns1's packets.
#
# The implementations are WG_IMPL1 (ns1) and WG_IMPL2 (ns2); each must be a single word (wg-quick runs it
# as one command). Their logs, if they write any once detached, and wg-quick's output go to
# $FGT_LOGDIR/daemon-wgquick-*.log.

WGQ_PORT1=51821
WGQ_PORT2=51822

# wgq_impl N: the absolute path of implementation N, or nothing if it is not a single executable.
wgq_impl() {
	local path
	impl_command "$1"
	((${#FGT_CMD[@]} == 1)) || return 1
	path=$(command -v -- "${FGT_CMD[0]}") || return 1
	[[ $path == /* ]] || path="$PWD/$path"
	printf '%s' "$path"
}

# wgq_veth: the veth pair between ns1 and ns2 (IPv6 without duplicate address detection).
wgq_veth() {
	must make_namespace "$NS1"
	must make_namespace "$NS2"
	must ip1 link add veth1 type veth peer name veth2
	must ip1 link set veth2 netns "$NS2"
	must ip1 addr add 10.0.0.1/24 dev veth1
	must ip1 addr add fd99::1/64 dev veth1 nodad
	must ip2 addr add 10.0.0.2/24 dev veth2
	must ip2 addr add fd99::2/64 dev veth2 nodad
	veths_up
}

# wgq_write_conf FILE PRIVATE-KEY ADDRESSES PORT PEER-PUB ENDPOINT ALLOWED-IPS: a wg-quick configuration
# (no Endpoint line if ENDPOINT is empty)
# whose hooks append "up IFNAME" and "down IFNAME" to FILE.marker (no "#" in hooks: wg-quick strips
# comments). DNS is deliberately not set (it would call resolvconf).
wgq_write_conf() {
	local file=$1
	(
		umask 077
		cat >"$file" <<-EOF
			[Interface]
			PrivateKey = $2
			Address = $3
			ListenPort = $4
			MTU = 1380
			PostUp = echo up %i >> $file.marker
			PostDown = echo down %i >> $file.marker

			[Peer]
			PublicKey = $5
			PresharedKey = $psk
			${6:+Endpoint = $6}
			AllowedIPs = $7
			PersistentKeepalive = 25
		EOF
	)
}

# wgq_run NS IMPL up|down CONF: wg-quick in NS, output appended to a log (never to a pipe: a detached
# daemon may keep the descriptor open).
wgq_run() {
	local ns=$1 impl=$2 action=$3 conf=$4 ifname log rc
	ifname=$(basename "$conf" .conf)
	log="$FGT_LOGDIR/daemon-wgquick-$ifname.log"
	printf '=== %(%H:%M:%S)T wg-quick %s %s in %s with %s\n' -1 "$action" "$conf" "$ns" "$impl" >>"$log"
	fgt_log "$ns: wg-quick $action $conf (WG_QUICK_USERSPACE_IMPLEMENTATION=$impl)"
	timeout --foreground 30 ip netns exec "$ns" env -u WG_PROCESS_FOREGROUND \
		WG_QUICK_USERSPACE_IMPLEMENTATION="$impl" LOG_LEVEL="${FGT_LOG_LEVEL:-verbose}" \
		wg-quick "$action" "$conf" </dev/null >>"$log" 2>&1
	rc=$?
	fgt_log "wg-quick $action $ifname: exit status $rc"
	return $rc
}

# wgq_log_ok IFNAME: wg-quick fell back to the userspace implementation and printed no warning (e.g. a
# world-readable file), no error of a missing tool (sysctl, nft, resolvconf) and no failing command.
wgq_log_ok() {
	local log="$FGT_LOGDIR/daemon-wgquick-$1.log"
	grep -q 'Missing WireGuard kernel module. Falling back to slow userspace implementation.' "$log" ||
		{ fgt_log "$1: wg-quick did not fall back to the userspace implementation"; return 1; }
	# The daemon's own log lines (a detached wireguard-go keeps writing to this file) are not wg-quick's.
	if grep -Ei 'warning|not found|permission denied|syntax error|error|RTNETLINK' "$log" |
		grep -Ev '^Error: Unknown device type\.$|^(TRACE|DEBUG|INFO|WARN|WARNING|ERROR): ' >&2; then
		fgt_log "$1: wg-quick printed the warnings or errors above"
		return 1
	fi
	return 0
}

# wgq_syncconf NS IFNAME CONF: the ExecReload of wg-quick@.service, inside NS.
wgq_syncconf() {
	fgt_log "$1: wg syncconf $2 <(wg-quick strip $3)"
	# shellcheck disable=SC2016 # expanded by the inner bash
	timeout --foreground 20 ip netns exec "$1" bash -c 'wg syncconf "$1" <(wg-quick strip "$2")' _ "$2" "$3" \
		>>"$FGT_LOGDIR/daemon-wgquick-$2.log" 2>&1
}

# wgq_daemon_pid NS IMPL: the pid of the (single) process in NS running IMPL.
wgq_daemon_pid() {
	local pid exe want found=()
	want=$(readlink -f -- "$2")
	for pid in $(ip netns pids "$1" 2>/dev/null); do
		exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || continue
		[[ $exe == "$want" ]] && pid_running "$pid" && found+=("$pid")
	done
	fgt_log "processes of $want in $1: ${found[*]:-none}"
	((${#found[@]} == 1)) && printf '%s' "${found[0]}"
}

# wgq_field NS IFNAME WHAT: "wg show IFNAME WHAT" run inside NS, as a user of that namespace would.
wgq_field() { ip netns exec "$1" wg show "$2" "$3" 2>&1; }

# wgq_mtu_is NS IFNAME MTU
wgq_mtu_is() { equals "MTU of $2" "$(ip -n "$1" -o link show dev "$2" 2>&1 | grep -o 'mtu [0-9]*')" "mtu $3"; }

# wgq_has_addresses NS IFNAME ADDRESS...: every ADDRESS (with prefix) is on the interface.
wgq_has_addresses() {
	local ns=$1 ifname=$2 addr shown
	shift 2
	shown=$(ip -n "$ns" -o addr show dev "$ifname" 2>&1)
	for addr in "$@"; do
		[[ $shown == *" $addr "* ]] || { fgt_log "$ifname lacks $addr: $shown"; return 1; }
	done
}

# wgq_endpoint_one_of NS IFNAME PEER-PUB "EP1|EP2...": the peer's endpoint is one of these. The file's
# endpoint may have been replaced by the address the peer's authenticated packets came from (roaming).
wgq_endpoint_one_of() {
	local got candidate candidates
	got=$(wgq_field "$1" "$2" endpoints)
	IFS='|' read -ra candidates <<<"$4"
	for candidate in "${candidates[@]}"; do
		[[ $got == "$3"$'\t'"$candidate" ]] && return 0
	done
	fgt_log "endpoints of $2: got '$got', expected one of $4"
	return 1
}

# wgq_wg_show NS IFNAME PEER-PUB PORT ENDPOINTS ALLOWED: the human "wg show" answers in NS and the
# configuration file's values read back (ENDPOINTS: as for wgq_endpoint_one_of).
wgq_wg_show() {
	local ns=$1 ifname=$2 pub=$3 out
	out=$(ip netns exec "$ns" wg show "$ifname" 2>&1)
	fgt_log "wg show $ifname: $out"
	[[ $out == *"interface: $ifname"* && $out == *"peer: $pub"* && $out == *"preshared key: "* ]] || return 1
	equals listen-port "$(wgq_field "$ns" "$ifname" listen-port)" "$4" &&
		wgq_endpoint_one_of "$ns" "$ifname" "$pub" "$5" &&
		equals allowed-ips "$(wgq_field "$ns" "$ifname" allowed-ips)" "$pub"$'\t'"$6" &&
		equals persistent-keepalive "$(wgq_field "$ns" "$ifname" persistent-keepalive)" "$pub"$'\t'25
}

# wgq_handshake_done NS IFNAME: the peer's latest handshake is not 0.
wgq_handshake_done() {
	local line
	line=$(wgq_field "$1" "$2" latest-handshakes)
	fgt_log "latest-handshakes of $2: $line"
	[[ ${line##*$'\t'} =~ ^[1-9][0-9]*$ ]]
}

# wgq_marker_is FILE EXPECTED
wgq_marker_is() { equals "hook marker $1" "$(cat -- "$1" 2>&1)" "$2"; }

# wgq_gone_after_down IFNAME NS PID: interface, socket and daemon gone within 5 s.
wgq_gone_after_down() {
	local ok=0
	wait_pid_exit "$3" 5 || { fgt_log "daemon $3 for $1 still runs"; ok=1; }
	wait_gone "$1" 3 || ok=1
	return $ok
}

# wgq_route_dev NS ADDRESS DEV [ip route get args]: the route to ADDRESS leaves through DEV.
wgq_route_dev() {
	local ns=$1 addr=$2 dev=$3 out
	shift 3
	out=$(ip -n "$ns" route get "$addr" "$@" 2>&1)
	fgt_log "$ns: route get $addr $*: $out"
	[[ $out == *" dev $dev "* ]]
}

# wgq_rules NS: both families' rules, for before/after comparisons.
wgq_rules() { ip -n "$1" -4 rule show; ip -n "$1" -6 rule show; }

# wgq_policy_rules NS TABLE: wg-quick's two rules, in both families.
wgq_policy_rules() {
	local ns=$1 table=$2 v rules
	for v in -4 -6; do
		rules=$(ip -n "$ns" "$v" rule show)
		fgt_log "$ns: ip $v rule: $rules"
		[[ $rules == *"not from all fwmark $(printf '%#x' "$table") lookup $table"* &&
			$rules == *"from all lookup main suppress_prefixlength 0"* ]] || return 1
	done
}

# wgq_nft_tables NS IFNAME: the "nft list tables" lines of wg-quick's tables for IFNAME.
wgq_nft_tables() { ip netns exec "$1" nft list tables 2>&1 | grep -F -- "wg-quick-$2" | sort; }

wgq_case_plain() {
	local impl1=$1 impl2=$2 dir=$3 conf1 conf2 pid1 pid2
	conf1="$dir/$IF1.conf" conf2="$dir/$IF2.conf"
	must wgq_write_conf "$conf1" "$key1" "192.168.241.1/24, fd00::1/112" $WGQ_PORT1 \
		"$pub2" "10.0.0.2:$WGQ_PORT2" "192.168.241.2/32, fd00::2/128"
	must wgq_write_conf "$conf2" "$key2" "192.168.241.2/24, fd00::2/112" $WGQ_PORT2 \
		"$pub1" "[fd99::1]:$WGQ_PORT1" "192.168.241.1/32, fd00::1/128"

	check "wg-quick: up in ns1" wgq_run "$NS1" "$impl1" up "$conf1" || fgt_abort "wg-quick up failed in ns1"
	# Before ns2 exists nothing can have roamed: the file's endpoint reads back exactly.
	check "wg-quick: wg show in ns1 reads the file's values back (ns2 still down)" wgq_wg_show "$NS1" "$IF1" \
		"$pub2" $WGQ_PORT1 "10.0.0.2:$WGQ_PORT2" "192.168.241.2/32 fd00::2/128"
	check "wg-quick: up in ns2" wgq_run "$NS2" "$impl2" up "$conf2" || fgt_abort "wg-quick up failed in ns2"
	check "wg-quick: ns1 fell back to the userspace implementation, no warnings" wgq_log_ok "$IF1"
	check "wg-quick: ns2 fell back to the userspace implementation, no warnings" wgq_log_ok "$IF2"
	pid1=$(wgq_daemon_pid "$NS1" "$impl1")
	pid2=$(wgq_daemon_pid "$NS2" "$impl2")
	check "wg-quick: ns1's daemon runs detached after wg-quick returned" test -n "$pid1"
	check "wg-quick: ns2's daemon runs detached after wg-quick returned" test -n "$pid2"
	check "wg-quick: configuration socket of ns1's interface" test -S "$(sock_path "$IF1")"
	check "wg-quick: MTU 1380 on ns1's interface" wgq_mtu_is "$NS1" "$IF1" 1380
	check "wg-quick: MTU 1380 on ns2's interface" wgq_mtu_is "$NS2" "$IF2" 1380
	check "wg-quick: addresses v4 and v6 on ns1's interface" \
		wgq_has_addresses "$NS1" "$IF1" 192.168.241.1/24 fd00::1/112
	check "wg-quick: addresses v4 and v6 on ns2's interface" \
		wgq_has_addresses "$NS2" "$IF2" 192.168.241.2/24 fd00::2/112
	check "wg-quick: PostUp hook ran in ns1 with %i replaced" wgq_marker_is "$conf1.marker" "up $IF1"
	check "wg-quick: PostUp hook ran in ns2 with %i replaced" wgq_marker_is "$conf2.marker" "up $IF2"
	check "wg-quick: ping v4 ns1 -> ns2" ping_all "$NS1" 192.168.241.2 10
	check "wg-quick: ping v6 ns1 -> ns2" ping_all "$NS1" fd00::2 10
	check "wg-quick: ping v4 ns2 -> ns1" ping_all "$NS2" 192.168.241.1 10
	check "wg-quick: ping v6 ns2 -> ns1" ping_all "$NS2" fd00::1 10
	check "wg-quick: wg show in ns1 after traffic (endpoint may have roamed to v6)" wgq_wg_show "$NS1" "$IF1" "$pub2" \
		$WGQ_PORT1 "10.0.0.2:$WGQ_PORT2|[fd99::2]:$WGQ_PORT2" "192.168.241.2/32 fd00::2/128"
	check "wg-quick: wg show in ns2 after traffic (endpoint may have roamed to v4)" wgq_wg_show "$NS2" "$IF2" "$pub1" \
		$WGQ_PORT2 "[fd99::1]:$WGQ_PORT1|10.0.0.1:$WGQ_PORT1" "192.168.241.1/32 fd00::1/128"
	check "wg-quick: handshake recorded in ns1" wgq_handshake_done "$NS1" "$IF1"
	# What "systemctl reload wg-quick@IF" does: wg syncconf with the stripped file, tunnel kept.
	must wgq_write_conf "$conf1" "$key1" "192.168.241.1/24, fd00::1/112" $WGQ_PORT1 \
		"$pub2" "10.0.0.2:$WGQ_PORT2" "192.168.241.2/32, fd00::2/128, 10.77.0.0/16"
	check "wg-quick: reload (wg syncconf of wg-quick strip) in ns1" wgq_syncconf "$NS1" "$IF1" "$conf1"
	check "wg-quick: reload adds the new allowed IPs" equals allowed-ips \
		"$(wgq_field "$NS1" "$IF1" allowed-ips)" "$pub2"$'\t'"192.168.241.2/32 fd00::2/128 10.77.0.0/16"
	check "wg-quick: tunnel still up after the reload" ping_all "$NS1" 192.168.241.2 10

	check "wg-quick: down in ns1" wgq_run "$NS1" "$impl1" down "$conf1"
	check "wg-quick: down in ns1 removes the interface and socket, the daemon exits" \
		wgq_gone_after_down "$IF1" "$NS1" "${pid1:-0}"
	check "wg-quick: PostDown hook ran in ns1" wgq_marker_is "$conf1.marker" "up $IF1"$'\n'"down $IF1"
	check "wg-quick: down in ns2" wgq_run "$NS2" "$impl2" down "$conf2"
	check "wg-quick: down in ns2 removes the interface and socket, the daemon exits" \
		wgq_gone_after_down "$IF2" "$NS2" "${pid2:-0}"
}

wgq_case_default_route() {
	local impl1=$1 impl2=$2 dir=$3 if3 if4 conf3 conf4 pid3 pid4 rules_before nft_before table=51820
	if3=$(ifname c) if4=$(ifname d)
	conf3="$dir/$if3.conf" conf4="$dir/$if4.conf"
	# ns2's endpoint address is reachable from ns1 only through the main table's default route, so only
	# marked packets (the daemon's own UDP) get there; everything else goes into the tunnel.
	must ip2 addr add 10.9.9.9/32 dev veth2
	must ip1 route add default via 10.0.0.2 dev veth1
	must sysctl_ns "$NS1" net/ipv4/conf/all/rp_filter 1
	must sysctl_ns "$NS1" net/ipv4/conf/veth1/rp_filter 1
	must wgq_write_conf "$conf3" "$key3" "192.168.241.1/24, fd00::1/112" $WGQ_PORT1 \
		"$pub4" "10.9.9.9:$WGQ_PORT2" "0.0.0.0/0, ::/0"
	must wgq_write_conf "$conf4" "$key4" "192.168.241.2/24, fd00::2/112, 192.168.99.7/32, abab::1111/128" \
		$WGQ_PORT2 "$pub3" "" "192.168.241.1/32, fd00::1/128"
	rules_before=$(wgq_rules "$NS1")
	nft_before=$(wgq_nft_tables "$NS1" "$if3")

	check "wg-quick default route: up in ns2" wgq_run "$NS2" "$impl2" up "$conf4" ||
		fgt_abort "wg-quick up failed in ns2"
	check "wg-quick default route: up in ns1 (AllowedIPs 0.0.0.0/0, ::/0)" wgq_run "$NS1" "$impl1" up "$conf3" ||
		fgt_abort "wg-quick up failed in ns1"
	check "wg-quick default route: no warnings (sysctl, nft found and working)" wgq_log_ok "$if3"
	pid3=$(wgq_daemon_pid "$NS1" "$impl1")
	pid4=$(wgq_daemon_pid "$NS2" "$impl2")
	check "wg-quick default route: daemons run detached" test -n "$pid3" -a -n "$pid4"
	check "wg-quick default route: fwmark set to $table" \
		equals fwmark "$(wgq_field "$NS1" "$if3" fwmark)" "$(printf '%#x' $table)"
	check "wg-quick default route: not-fwmark and suppress_prefixlength 0 rules, v4 and v6" \
		wgq_policy_rules "$NS1" $table
	check "wg-quick default route: nft tables wg-quick-$if3 for ip and ip6" \
		equals "nft tables" "$(wgq_nft_tables "$NS1" "$if3")" "table ip wg-quick-$if3"$'\n'"table ip6 wg-quick-$if3"
	check "wg-quick default route: src_valid_mark set" \
		equals src_valid_mark "$(ip netns exec "$NS1" cat /proc/sys/net/ipv4/conf/all/src_valid_mark)" 1
	check "wg-quick default route: v4 default route goes through the tunnel" \
		wgq_route_dev "$NS1" 192.168.99.7 "$if3"
	check "wg-quick default route: v6 default route goes through the tunnel" \
		wgq_route_dev "$NS1" abab::1111 "$if3"
	check "wg-quick default route: unmarked packets to the endpoint would enter the tunnel" \
		wgq_route_dev "$NS1" 10.9.9.9 "$if3"
	check "wg-quick default route: marked packets to the endpoint leave through veth1" \
		wgq_route_dev "$NS1" 10.9.9.9 veth1 mark $table
	check "wg-quick default route: ping the peer's tunnel address v4" ping_all "$NS1" 192.168.241.2 10
	check "wg-quick default route: ping the peer's tunnel address v6" ping_all "$NS1" fd00::2 10
	check "wg-quick default route: ping v4 routed only via the tunnel (default route)" \
		ping_all "$NS1" 192.168.99.7 10
	check "wg-quick default route: ping v6 routed only via the tunnel (default route)" \
		ping_all "$NS1" abab::1111 10
	# ns2 has no Endpoint for ns1: it learned it from ns1's packets, which left through veth1.
	check "wg-quick default route: ns2 learned ns1's endpoint 10.0.0.1:$WGQ_PORT1" \
		equals endpoints "$(wgq_field "$NS2" "$if4" endpoints)" "$pub3"$'\t'"10.0.0.1:$WGQ_PORT1"

	check "wg-quick default route: down in ns1" wgq_run "$NS1" "$impl1" down "$conf3"
	check "wg-quick default route: down in ns1 removes the interface and socket, the daemon exits" \
		wgq_gone_after_down "$if3" "$NS1" "${pid3:-0}"
	check "wg-quick default route: down restores the rules" \
		equals rules "$(wgq_rules "$NS1")" "$rules_before"
	check "wg-quick default route: down removes the nft tables" \
		equals "nft tables" "$(wgq_nft_tables "$NS1" "$if3")" "$nft_before"
	check "wg-quick default route: table $table is empty again" \
		test -z "$(ip -n "$NS1" -4 route show table $table; ip -n "$NS1" -6 route show table $table)"
	check "wg-quick default route: down in ns2" wgq_run "$NS2" "$impl2" down "$conf4"
	check "wg-quick default route: down in ns2 removes the interface and socket, the daemon exits" \
		wgq_gone_after_down "$if4" "$NS2" "${pid4:-0}"
}

scenario_wg_quick() {
	local impl1 impl2 dir
	command -v wg-quick >/dev/null || fgt_abort "wg-quick is not installed"
	impl1=$(wgq_impl 1) || fgt_abort "WG_IMPL1 ($WG_IMPL1) must be one executable for wg-quick"
	impl2=$(wgq_impl 2) || fgt_abort "WG_IMPL2 ($WG_IMPL2) must be one executable for wg-quick"
	dir="$FGT_LOGDIR/wg-quick-$FGT_ID"
	must mkdir -p -m 700 "$dir"
	wgq_veth
	wgq_case_plain "$impl1" "$impl2" "$dir"
	wgq_case_default_route "$impl1" "$impl2" "$dir"
}
