#!/bin/bash
# Scenario "hostile": a hostile network and hostile local users against an established session.
#
#   1. Transport attacks: a UDP relay in ns0 sits between the two daemons (ns2's endpoint is the relay) and
#      keeps a copy of every datagram. With the relay holding back traffic (so that nothing legitimate
#      arrives), a stranger (127.0.0.5 / 127.0.0.6, any port) sends each daemon replays, truncations,
#      bit flips, oversized junk, unknown receiver indexes, fake keepalives, garbage handshake messages.
#      Nothing may be delivered (nftables counter on the tunnel interface), no byte counted as received,
#      no endpoint moved to the stranger, nothing answered to the stranger; a genuine datagram held back
#      during the attack must still be accepted afterwards (forgeries did not advance the replay window),
#      and the session must keep working.
#   2. Secrets in logs: the daemons run with LOG_LEVEL=trace throughout; after handshakes, traffic, the
#      attack and a preshared-key change, no private or preshared key (base64, hex, upper-case hex, first
#      16 hex digits) may appear in their logs.
#   3. The configuration socket: mode 0600 in a directory others cannot write; as user nobody, wg show
#      and a raw connect fail with "permission denied".
#   4. A malformed-request corpus over the socket (18 cases, one connection each): every case is answered
#      errno=-N or the connection is closed, and wg showconf is unchanged after each; while a client that
#      stops mid-request holds its connection (12 s), wg show answers within 3 s (connections are served
#      concurrently; a server that serves them one after another answers only when the silent one is cut off
#      or leaves), one that trickles bytes is measured; wg show still answers and the daemon still runs
#      afterwards.
#   Known differences of Debian's wireguard-go 0.0.20220316 (impl1) are reported as SKIP (FGT_UNSUPPORTED, below).

HOSTILE_PY="$(dirname "${BASH_SOURCE[0]}")/hostile.py"
HOSTILE_RELAY_PORT=10
HOSTILE_CTRL_PORT=11

# hostile_relay_start: the recording relay in ns0 between ports 1 and 2; sets HOSTILE_CAPTURE.
hostile_relay_start() {
	HOSTILE_CAPTURE="$FGT_LOGDIR/relay-capture.txt"
	relay_start "$HOSTILE_PY" "$HOSTILE_RELAY_PORT" 1 2 "$HOSTILE_CTRL_PORT" "$HOSTILE_CAPTURE"
}

hostile_relay() { relay_ctrl "$HOSTILE_CTRL_PORT" "$1"; }

# hostile_counter_setup NS IFNAME: a named nftables counter of every packet coming in from the tunnel.
hostile_counter_setup() {
	in_ns "$1" nft -f - <<-EOF
		table inet fgt_hostile {
			counter delivered { }
			chain pre {
				type filter hook prerouting priority -300; policy accept;
				iifname "$2" counter name "delivered"
			}
		}
	EOF
}

# hostile_delivered NS: packets counted so far.
hostile_delivered() {
	local out
	out=$(ip netns exec "$1" nft list counter inet fgt_hostile delivered 2>&1)
	[[ $out =~ packets\ ([0-9]+) ]] && printf '%s' "${BASH_REMATCH[1]}" || printf 'unknown'
}

# hostile_answers_none SUMMARY: the attacker's summary says no datagram came back.
hostile_answers_none() { [[ $1 =~ answers\ 0\  ]]; }

# hostile_state: one line with what must not change during the attack.
hostile_state() {
	printf 'ns1 delivered %s rx %s endpoint %s | ns2 delivered %s rx %s endpoint %s' \
		"$(hostile_delivered "$NS1")" "$(wg_rx_bytes "$IF1")" "$(wg show "$IF1" endpoints | cut -f2)" \
		"$(hostile_delivered "$NS2")" "$(wg_rx_bytes "$IF2")" "$(wg show "$IF2" endpoints | cut -f2)"
}

# hostile_drops_logged N IFNAME ATTACKER SUMMARY: Ferroguard logs every dropped datagram at trace level with
# its reason; every non-empty datagram of the attack must have been looked at and dropped (this shows the
# corpus really reached the engine). Other implementations: the reasons are not comparable, nothing checked.
hostile_drops_logged() {
	local n=$1 ifname=$2 attacker=$3 summary=$4 log sent empty logged reasons
	[[ $(impl_kind "$n") == ferroguard ]] || return 0
	log="$FGT_LOGDIR/daemon-$ifname.log"
	[[ $summary =~ ^sent\ ([0-9]+) ]] && sent=${BASH_REMATCH[1]}
	[[ $summary =~ empty\ ([0-9]+) ]] && empty=${BASH_REMATCH[1]}
	logged=$(grep -c "dropped a datagram from $attacker:" "$log")
	reasons=$(grep -o "dropped a datagram from $attacker:[0-9]*: [a-z_0-9]*" "$log" | awk '{ print $NF }' |
		sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')
	note "impl$n drop reasons logged for the attacker: $reasons"
	check "hostile: impl$n looked at and dropped every non-empty attack datagram (trace log: $logged)" \
		test "$logged" -eq $((${sent:-0} - ${empty:-0}))
}

hostile_transport() {
	local before after summary1 summary2 delivered_before
	must hostile_relay_start
	must wgc set "$IF2" peer "$pub1" endpoint "127.0.0.1:$HOSTILE_RELAY_PORT"
	must hostile_counter_setup "$NS1" "$IF1"
	must hostile_counter_setup "$NS2" "$IF2"
	check "hostile: session up through the relay (ns2 -> ns1)" ping_all "$NS2" 192.168.241.1 5
	check "hostile: session up through the relay (ns1 -> ns2)" ping_all "$NS1" 192.168.241.2 5
	check "hostile: ns1 sees ns2 at the relay's address" \
		endpoint_is "$IF1" "$pub2" "127.0.0.1:$HOSTILE_RELAY_PORT"

	# Fresh genuine datagrams, held back by the relay: never delivered, so only forgeries can be made
	# of them. The pings themselves go unanswered.
	must hostile_relay hold
	ping_once "$NS2" 192.168.241.1
	ping_once "$NS1" 192.168.241.2
	sleep 0.3

	before=$(hostile_state)
	note "before the attack: $before"
	summary1=$(in_ns "$NS0" timeout --foreground 30 python3 "$HOSTILE_PY" attack "$HOSTILE_CAPTURE" 1 127.0.0.5 \
		"$(key_hex "$pub1")" 2>>"$FGT_LOGDIR/attack.log")
	summary2=$(in_ns "$NS0" timeout --foreground 30 python3 "$HOSTILE_PY" attack "$HOSTILE_CAPTURE" 2 127.0.0.6 \
		"$(key_hex "$pub2")" 2>>"$FGT_LOGDIR/attack.log")
	note "attack on ns1's daemon: $summary1"
	note "attack on ns2's daemon: $summary2"
	sleep 0.5
	after=$(hostile_state)
	note "after the attack:  $after"

	check "hostile: the corpus was sent to ns1's daemon (replays, truncations, bit flips included)" \
		eval '[[ $summary1 =~ ^sent\ [0-9]{3,} && $summary1 == *replay=* && $summary1 == *bit-flip=* && $summary1 == *"held "[1-9]* ]]'
	check "hostile: the corpus was sent to ns2's daemon" \
		eval '[[ $summary2 =~ ^sent\ [0-9]{3,} && $summary2 == *replay=* && $summary2 == *"held "[1-9]* ]]'
	check "hostile: both daemons still run" \
		eval 'pid_running "${FGT_DAEMON_PID[$IF1]}" && pid_running "${FGT_DAEMON_PID[$IF2]}"'
	check "hostile: nothing answered to the attacker (ns1's daemon)" hostile_answers_none "$summary1"
	check "hostile: nothing answered to the attacker (ns2's daemon)" hostile_answers_none "$summary2"
	check "hostile: nothing delivered, no rx byte counted, endpoints unchanged" equals state "$after" "$before"
	hostile_drops_logged 1 "$IF1" 127.0.0.5 "$summary1"
	hostile_drops_logged 2 "$IF2" 127.0.0.6 "$summary2"
	check "hostile: ns1's endpoint for ns2 is still the relay" \
		endpoint_is "$IF1" "$pub2" "127.0.0.1:$HOSTILE_RELAY_PORT"
	check "hostile: ns2's endpoint for ns1 is still the relay" \
		endpoint_is "$IF2" "$pub1" "127.0.0.1:$HOSTILE_RELAY_PORT"

	# The held-back genuine datagrams arrive now, from the legitimate address.
	delivered_before=$(hostile_delivered "$NS1")
	must hostile_relay pass
	must hostile_relay release
	sleep 0.5
	check "hostile: the held-back genuine datagram is still accepted (forgeries did not advance the replay window)" \
		test "$(hostile_delivered "$NS1")" -gt "${delivered_before:-0}"
	check "hostile: the session works after the attack (ns2 -> ns1)" ping_all "$NS2" 192.168.241.1 10
	check "hostile: the session works after the attack (ns1 -> ns2)" ping_all "$NS1" 192.168.241.2 10
}

# hostile_secret_forms BASE64KEY: the strings that must never be logged.
hostile_secret_forms() {
	local hex upper
	hex=$(key_hex "$1")
	upper=${hex^^}
	printf '%s\n' "$1" "$hex" "$upper" "${hex:0:16}" "${upper:0:16}"
}

# hostile_logs_clean SECRET...: no form of any secret in the daemon logs.
hostile_logs_clean() {
	local secret form logs found=0
	logs=("$FGT_LOGDIR"/daemon-*.log)
	for secret in "$@"; do
		while read -r form; do
			[[ -n $form ]] || continue
			if grep -qiF -- "$form" "${logs[@]}"; then
				fgt_log "a secret (${form:0:4}...) appears in the daemon logs"
				found=1
			fi
		done < <(hostile_secret_forms "$secret")
	done
	return $found
}

hostile_secrets() {
	local psk2
	psk2=$(wg genpsk)
	# A reconfiguration with a new preshared key on both sides; ns2 drops its session (peer removed and
	# added again), so the next handshake uses the new key.
	must wgc set "$IF1" peer "$pub2" preshared-key <(echo "$psk2")
	must wgc set "$IF2" peer "$pub1" remove
	must wgc set "$IF2" peer "$pub1" preshared-key <(echo "$psk2") endpoint "127.0.0.1:$HOSTILE_RELAY_PORT" \
		allowed-ips 192.168.241.1/32,fd00::1/128
	check "hostile: a new handshake with the new preshared key works" ping_retry "$NS2" 192.168.241.1
	HOSTILE_PSK2=$psk2
}

# hostile_logs_check: run last, so that the logs cover everything, the malformed requests included (one of
# them carries a private key, HOSTILE_CORPUS_KEY, in a request that is refused).
hostile_logs_check() {
	local lines
	lines=$(cat "$FGT_LOGDIR"/daemon-*.log | wc -l)
	note "trace logs: $lines lines"
	check "hostile: the trace logs are not empty (at least 20 lines)" test "$lines" -ge 20
	check "hostile: no private or preshared key (base64, hex, 16-hex prefix) in the trace logs" \
		hostile_logs_clean "$key1" "$key2" "$psk" "$HOSTILE_PSK2" "$HOSTILE_CORPUS_KEY"
}

# hostile_as_nobody COMMAND...: run as user nobody, with no supplementary groups.
hostile_as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }

hostile_socket_access() {
	local sock out mode dir_mode
	sock=$(sock_path "$IF1")
	mode=$(stat -c %a "$sock")
	dir_mode=$(stat -c %a "$FGT_SOCK_DIR")
	note "socket mode $mode, directory mode $dir_mode"
	check "hostile: the configuration socket gives no permission to group or others" \
		eval '(( (8#$mode & 8#077) == 0 ))'
	if supported socket_mode_0600 "hostile: the configuration socket has mode 0600" 1; then
		check "hostile: the configuration socket has mode 0600" equals mode "$mode" 600
	fi
	check "hostile: the socket directory is writable by its owner only" \
		eval '(( (8#$dir_mode & 8#022) == 0 ))'
	out=$(hostile_as_nobody timeout 5 wg show "$IF1" 2>&1)
	local rc=$?
	fgt_log "wg show as nobody: status $rc: $out"
	check "hostile: wg show as nobody fails with permission denied" \
		eval '((rc != 0)) && [[ ${out,,} == *"permission denied"* ]]'
	out=$(hostile_as_nobody timeout 5 python3 "$HOSTILE_PY" connect "$sock" 2>&1)
	fgt_log "connect as nobody: $out"
	check "hostile: a raw connect as nobody fails with EACCES" equals connect "$out" EACCES
	check "hostile: ... while root can connect (control)" equals connect \
		"$(timeout 5 python3 "$HOSTILE_PY" connect "$sock" 2>&1)" connected
}

# The private key inside one refused request of the corpus (hostile.py's "a8" * 32), in base64.
HOSTILE_CORPUS_KEY=qKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKg=

# Known differences of Debian's wireguard-go 0.0.20220316 for this scenario's checks (see lib.sh's "supported").
FGT_UNSUPPORTED[wireguard-go:socket_mode_0600]="wireguard-go leaves its socket at mode 0700 (still owner-only, checked above)"
FGT_UNSUPPORTED[wireguard-go:concurrent_uapi]="wireguard-go holds its configuration lock while it reads a set request: a client silent mid-request blocks wg show until it leaves (11.5 s here)"
FGT_UNSUPPORTED[wireguard-go:atomic_set]="wireguard-go applies the lines of a set request as it reads them, before an invalid line or EOF"

# hostile_uapi_case INDEX BEFORE: case INDEX is refused (errno=-N or closed) and wg showconf still gives BEFORE.
hostile_uapi_case() {
	local out after
	out=$(timeout --foreground 20 python3 "$HOSTILE_PY" uapi-case "$(sock_path "$IF1")" "$(key_hex "$pub2")" "$1" \
		2>>"$FGT_LOGDIR/uapi-corpus.log")
	fgt_log "answer: $out"
	[[ $out == "ok "* ]] || return 1
	after=$(wg showconf "$IF1" 2>&1)
	# Compared here, not through a check's logged arguments: the configuration holds secrets.
	[[ -n $2 && $after == "$2" ]] || { fgt_log "wg showconf changed"; return 1; }
}

hostile_uapi_corpus() {
	local before name index=0
	before=$(wg showconf "$IF1" 2>&1)
	while IFS= read -r name; do
		# Cases this implementation is known to get wrong are skipped (they would change the configuration).
		case $name in
		"half a set request"* | "valid line then"* | "private_key then"*)
			supported atomic_set "hostile: malformed request refused, configuration unchanged: $name" 1 ||
				{ ((index++)); continue; } ;;
		esac
		check "hostile: malformed request refused, configuration unchanged: $name" hostile_uapi_case "$index" "$before"
		((index++))
	done < <(python3 "$HOSTILE_PY" uapi-names)
	check "hostile: the corpus has its 18 cases" test "$index" -eq 18
	hostile_stalled_clients
	check "hostile: wg show still answers after the corpus" eval 'wg show "$IF1" >/dev/null'
	check "hostile: the daemon still runs after the corpus" pid_running "${FGT_DAEMON_PID[$IF1]}"
}

# hostile_beside_stalled_client MODE SECONDS [stop]: how long wg show takes (ms, into HOSTILE_ELAPSED) while
# another client holds a connection with an unfinished request for SECONDS (MODE: silent or trickle, see
# hostile.py). Then the client is left to end by itself and report how it ended, or with "stop" it is stopped
# once wg show has answered (a silent client never learns whether the daemon cut it off: its report would say
# nothing, and waiting for it would only cost time).
hostile_beside_stalled_client() {
	local mode=$1 seconds=$2 stop=${3:-} ready pid start out client
	ready=$(mktemp -u "$FGT_LOGDIR/stall-ready-XXXXXX")
	timeout --foreground $((seconds + 10)) python3 "$HOSTILE_PY" stall "$(sock_path "$IF1")" "$mode" "$seconds" \
		"$ready" >"$FGT_LOGDIR/stall-$mode.out" 2>&1 &
	pid=$!
	FGT_PIDS+=("$pid")
	wait_ready_file "$ready" "$pid" "stalled client"  # not fatal: a missing ready file means 'unanswered' below
	sleep 0.5
	start=$(date +%s%N)
	out=$(timeout --foreground $((seconds + 10)) wg show "$IF1" listen-port 2>&1)
	HOSTILE_ELAPSED=$((($(date +%s%N) - start) / 1000000))
	[[ -e $ready && $out =~ ^[0-9]+$ ]] || HOSTILE_ELAPSED=unanswered
	if [[ $stop == stop ]]; then
		kill_pids "$pid"
		client="stopped after wg show answered"
	else
		wait_pid_exit "$pid" $((seconds + 5)) || kill_pids "$pid"
		client=$(<"$FGT_LOGDIR/stall-$mode.out")
	fi
	wait "$pid" 2>/dev/null
	note "wg show beside a $mode client: $HOSTILE_ELAPSED ms; the client: $client"
}

# hostile_stalled_clients: a client that stops in the middle of a request never delays another client: wg
# show answers within 3 s while it holds its connection for 12 s (Ferroguard cuts it after 10 s without
# progress; a server serving connections one after another would answer only then, after about 11.5 s). The
# silent client is stopped once wg show has answered: whether it answered at once or only after the client
# left is what the check measures.
# A client that trickles a byte every 2 s is measured, not checked (only root can connect).
hostile_stalled_clients() {
	hostile_beside_stalled_client silent 12 stop
	if supported concurrent_uapi "hostile: wg show answers within 3 s beside a client silent mid-request" 1; then
		check "hostile: wg show answers within 3 s beside a client silent mid-request" \
			eval '[[ $HOSTILE_ELAPSED =~ ^[0-9]+$ ]] && ((HOSTILE_ELAPSED < 3000))'
	fi
	hostile_beside_stalled_client trickle 8
}

# hostile_log_level N: the most verbose level implementation N knows (wireguard-go stops at "verbose").
hostile_log_level() {
	case $(impl_kind "$1") in
	wireguard-go) printf verbose ;;
	*) printf trace ;;
	esac
}

# hostile_topology: topo_loopback, with each daemon at its most verbose log level from the start (start_daemon
# reads FGT_LOG_LEVEL; the local is seen there by dynamic scope).
hostile_topology() {
	local FGT_LOG_LEVEL
	make_namespaces
	FGT_LOG_LEVEL=$(hostile_log_level 1)
	must start_daemon 1 "$IF1" "$NS0"
	must ip0 link set "$IF1" netns "$NS1"
	FGT_LOG_LEVEL=$(hostile_log_level 2)
	must start_daemon 2 "$IF2" "$NS0"
	must ip0 link set "$IF2" netns "$NS2"
	configure_peers
}

scenario_hostile() {
	hostile_topology
	hostile_transport
	hostile_secrets
	hostile_socket_access
	hostile_uapi_corpus
	check "hostile: the session still works at the end" ping_retry "$NS2" 192.168.241.1
	hostile_logs_check
}
