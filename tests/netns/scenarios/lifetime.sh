#!/bin/bash
# Scenario "lifetime" (kernel #25, analogue): the lifetime of the daemon, one implementation at a time.

# lifetime_second_refused N IFNAME: another daemon for a name in use must exit non-zero within 5 s and leave
# the first one serving.
lifetime_second_refused() {
	local n=$1 name=$2 pid rc
	impl_command "$n"
	ip netns exec "$NS0" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${FGT_LOG_LEVEL:-verbose}" \
		"${FGT_CMD[@]}" -f "$name" >>"$FGT_LOGDIR/daemon-$name-second.log" 2>&1 &
	pid=$!
	FGT_PIDS+=("$pid")
	if ! wait_pid_exit "$pid" 5; then
		fgt_log "the second daemon for $name is still running"
		return 1
	fi
	wait "$pid"
	rc=$?
	fgt_log "second daemon exited with status $rc"
	((rc != 0))
}

lifetime_for() {
	local n=$1 name p
	name=$(ifname "L$n")
	p="lifetime (impl$n $(impl_kind "$n"))"

	check "$p: socket and interface appear within 5 s" start_daemon "$n" "$name" "$NS0" || return
	check "$p: wg show answers" wgc show "$name"
	check "$p: a second daemon for the same name is refused" lifetime_second_refused "$n" "$name"
	check "$p: the first daemon still serves afterwards" wgc show "$name"
	check "$p: SIGTERM: exits, socket and interface removed" stop_daemon "$name"

	must start_daemon "$n" "$name" "$NS0"
	must ip0 link del "$name"
	check "$p: interface deleted: daemon exits within 3 s, socket removed" \
		eval 'daemon_exited "$name" 3 && wait_gone "$name" 2'

	must start_daemon "$n" "$name" "$NS0"
	must rm -f -- "$(sock_path "$name")"
	check "$p: socket file deleted: daemon exits within 3 s, interface removed" \
		eval 'daemon_exited "$name" 3 && wait_gone "$name" 2'

	must mkdir -p "$FGT_SOCK_DIR"
	must make_stale_socket "$(sock_path "$name")"
	check "$p: a stale socket file is replaced" eval 'start_daemon "$n" "$name" "$NS0" && wg show "$name" >/dev/null'
	check "$p: SIGTERM after the stale socket: clean exit" stop_daemon "$name"

	# The kernel's "circular netns references" test has this userspace analogue: the namespace holding the
	# interface disappears, the daemon must notice and exit.
	local ns_gone="$FGT_PREFIX-$FGT_OWNER-$FGT_ID-3"
	must make_namespace "$ns_gone"
	must start_daemon "$n" "$name" "$NS0"
	must ip0 link set "$name" netns "$ns_gone"
	must ip netns del "$ns_gone"
	check "$p: namespace of the interface deleted: daemon exits within 3 s, socket removed" \
		eval 'daemon_exited "$name" 3 && wait_gone "$name" 2'
}

scenario_lifetime() {
	no_single_targets "lifetime" && return
	make_namespaces
	local n
	for n in $(single_targets); do lifetime_for "$n"; done
}
