#!/bin/bash
# Scenario "faults": a bad network and a disturbed host while traffic flows (issue #8).
#
# Topology: topo_loopback (both daemons start in ns0, their UDP sockets on 127.0.0.1 ports 1 and 2 stay
# there; IF1 is in ns1 at 192.168.241.1, IF2 in ns2 at .2). Section 4 adds a NAT topology in the same
# namespaces with two more daemons. Every check prints its measured figure.
#
#   1. Handshake under loss, first (nothing else in flight then): both peers forget their session (peer
#      removed and added again), an nftables quota in ns0 drops the first K initiations (UDP payload byte
#      0 = 1) towards the responder (K = 2 when impl1 initiates, K = 1 when impl2 does), a sniffer on ns0's
#      loopback (faults.py sniff: AF_PACKET, kernel timestamps, so it also sees the dropped ones) records
#      every handshake message. Checks: exactly K + 1 initiations before the response, every interval
#      between them in [4.9, 5.733] s, i.e. REKEY_TIMEOUT 5 s plus a jitter of at most 333 ms (kernel and
#      wireguard-go: REKEY_TIMEOUT + random(0..333 ms)), with 100 ms of slack below (the first send may
#      leave a little after its timer was armed) and 400 ms above (timer wake-up on a loaded 2-core CI
#      machine); then the session comes up (the ping is answered).
#      Loss (nftables in ns0, prerouting: "numgen random mod 100 < N drop" on the tunnel's UDP between
#      ports 1 and 2, both directions; no netem). Loopback carries a UDP GSO batch (up to 64 datagrams)
#      as one packet through nftables, so ns0's lo gets gso_max_segs 1 for these checks: the kernel splits
#      the batches before the receive hooks and the loss is per datagram.
#      - N = 10: a 4 MB TCP transfer through the tunnel arrives complete with the sender's sha256 within
#        40 s. The connection is opened before the loss starts and the TCP endpoints' minimum
#        retransmission timeout is 20 ms (route rto_min), so that TCP's backoff does not decide the check.
#      - N = 30: 2000 numbered UDP datagrams of 1200 bytes each way at once (faults.py udp-send, 1 per ms,
#        so only the loss table removes datagrams). In each direction every datagram that arrives has the
#        bytes it was sent with and arrives once, and 70 ± 6 % of them arrive (6 % is over 5 standard
#        deviations for 2000 datagrams). This was a 2 MB TCP transfer until CI showed that TCP itself does
#        not survive 30 % loss both ways: its smoothed RTT grows to tens of milliseconds on a 0.155 ms
#        path (61 ms, timeout 484 ms and doubling, in one stall; rto_min does not bound it), and the
#        transfer stalls past 40 s in about 2 of 100 runs through the tunnel (wireguard-go/ferroguard), and
#        in most runs over a bare veth with the same nftables loss (measured 2026-11-26, bbr and cubic
#        alike; RELIABILITY.md). A check of the tunnel must not depend on that.
#      The loss applied, measured with nftables counters over at least 1000 datagrams, must be N ± 5 %.
#   2. A UDP relay of our own (faults.py relay, in ns0, port 10; both endpoints point at it):
#      - reordering: the relay holds up to 64 datagrams per direction and releases them shuffled (or
#        after 20 ms). A 4 MB TCP transfer arrives with the right sha256; the relay counts how many
#        transport datagrams it forwarded behind a higher counter (must be > 0: reordering happened),
#        and each daemon's rx byte counter grows by exactly the bytes the relay delivered to it: no
#        datagram was refused (64 is far inside the 8192-message replay window). Only datagrams the
#        kernel dropped because the daemon's socket buffer was full (the relay releases a window at once;
#        counted in ns0's /proc/net/udp) may be missing, at most 1452 bytes (a full datagram) each.
#      - duplication: every datagram is sent twice. A burst of 500 numbered UDP datagrams arrives with
#        every number exactly once (the receiving application sees no duplicate), and the receiving
#        daemon's rx counter grows by exactly half of what the relay delivered (each duplicate dropped).
#      - delay: 50 ms each way. After both peers forget their session, the handshake completes through
#        the delay and ping RTTs (5 pings) are at least 100 ms (two relay passes) and at most 400 ms.
#   3. Restart mid-transfer: during "ping -D -i 0.2" from one side, its daemon is killed with SIGKILL and
#      started again with the same key and configuration; the other side keeps its old session. The
#      restarted side has no session and initiates on the next ping, the old side answers. Checked: the
#      first reply comes at most FGT_ONE_RETRY_S (6.33 s) after the restarted daemon is configured = REKEY_TIMEOUT 5 s
#      + jitter 0.333 s (one lost or refused first initiation is retried after that) + 1 s for the ping
#      interval, the handshake round trip and scheduling on a loaded machine. Done for impl2, then impl1.
#      The outage as ping saw it (kill to first reply) is printed. Not tested (it takes 15 s): when only
#      the old side sends, it starts a new handshake after KEEPALIVE_TIMEOUT + REKEY_TIMEOUT.
#   4. NAT expiry and roaming (daemons in ns1/ns2, ns1 behind an nftables SNAT in ns0, persistent
#      keepalive 1 s, tunnel 192.168.242.0/24): during "ping -i 0.1" from the server side, (a) the SNAT
#      rule changes its port (20001 -> 20002-20009) and the conntrack table is flushed (what a NAT
#      reboot does; faults.py ct-flush = "conntrack -F"); (b) the client's address changes 192.168.1.100
#      -> .101. Each time the server must learn the new endpoint port (wg show endpoints) and its pings
#      resume within 3 s: the client sends nothing but its keepalive (1 s) until the server knows where
#      it is, plus 2 s of margin. (b) is a SKIP when impl1 (the client) is wireguard-go: it never sends
#      again once its sticky IPv4 source is gone (lib.sh's sticky_v4_source_gone; checked: it fails).
#   5. Lifecycle under traffic (impl1's daemon, while ns2 flood-pings 192.168.241.1): (a) ip link del,
#      (c) socket file removed, (b) interface moved to another namespace, (d) SIGTERM. src/daemon.rs and
#      the usage text: the daemon exits (status 0) on SIGTERM, interface deletion and socket removal,
#      removing the socket and the interface; a moved interface keeps its TUN descriptor, so the daemon
#      keeps running with its UDP socket in ns0 and the tunnel works from the new namespace once it is
#      addressed there. Bounds: exit within 3 s (the lifetime scenario's bound: the socket is checked every
#      0.5 s) and 5 s for SIGTERM (stop_daemon); then no socket, no interface in any namespace, no process
#      left for the name, and a new daemon for the same name starts at once (≤ 5 s, start_daemon) and the
#      tunnel works again. (d) is done while the interface is in the other namespace: SIGTERM must
#      remove it there too. The lifetime scenario checks the same events without traffic.
#   Known differences of Debian's wireguard-go 0.0.20220316 are reported as SKIP (lib.sh's "supported").
#   The pairs after the first (FGT_QUICK=1) skip, as named SKIPs, the case of section 1 where impl1 initiates
#   and all of section 5: see faults_loss and scenario_faults.

FAULTS_PY="$(dirname "${BASH_SOURCE[0]}")/faults.py"
FAULTS_RELAY_PORT=10
FAULTS_CTRL_PORT=11

faults_py() { python3 "$FAULTS_PY" "$@"; }

# faults_now: wall-clock seconds with fractions (comparable with ping -D and the sniffer's timestamps).
faults_now() { date +%s.%N; }

# faults_elapsed_ms START: milliseconds since START (faults_now).
faults_elapsed_ms() { awk -v s="$1" -v n="$(faults_now)" 'BEGIN { printf "%d", (n - s) * 1000 }'; }

# faults_wait_first_reply PING_LOG START TRIES: the ping-gaps summary from START, once it shows a first reply
# after START or after TRIES polls 0.1 s apart.
faults_wait_first_reply() {
	local summary i
	for ((i = 0; i < $3; i++)); do
		summary=$(faults_py ping-gaps "$1" "$2")
		[[ $summary == *"first_after none"* ]] || break
		sleep 0.1
	done
	printf '%s\n' "$summary"
}

# faults_ping_start NS DEST INTERVAL SECONDS LIMIT: a background "ping -D" from NS to DEST for SECONDS (killed
# after LIMIT) into FAULTS_PING_LOG (pid FAULTS_PING_PID); returns once a first reply is logged, or after 1 s.
faults_ping_start() {
	local i
	FAULTS_PING_LOG=$(mktemp "$FGT_LOGDIR/ping-XXXXXX")
	in_ns "$1" timeout --foreground "$5" ping -n -D -i "$3" -W 1 -w "$4" "$2" >"$FAULTS_PING_LOG" 2>&1 &
	FAULTS_PING_PID=$!
	FGT_PIDS+=("$FAULTS_PING_PID")
	for ((i = 0; i < 20; i++)); do
		grep -q ' bytes from ' "$FAULTS_PING_LOG" && return 0
		sleep 0.05
	done
}

# faults_ping_stop: ends the ping of faults_ping_start.
faults_ping_stop() {
	kill_pids "$FAULTS_PING_PID"
	wait "$FAULTS_PING_PID" 2>/dev/null
}

# faults_between VALUE LOW HIGH: LOW <= VALUE <= HIGH (decimals).
faults_between() { awk -v v="$1" -v l="$2" -v h="$3" 'BEGIN { exit !(v != "" && v + 0 >= l && v + 0 <= h) }'; }

# faults_configure N: IFn (in NSn) gets its address, key, listen port and its peer with the direct endpoint.
faults_configure() {
	local n=$1 ifname ns key peer_pub port peer_port
	if [[ $n == 1 ]]; then
		ifname=$IF1 ns=$NS1 key=$key1 peer_pub=$pub2 port=1 peer_port=2
	else
		ifname=$IF2 ns=$NS2 key=$key2 peer_pub=$pub1 port=2 peer_port=1
	fi
	ip -n "$ns" addr add "192.168.241.$n/24" dev "$ifname" &&
		ip -n "$ns" addr add "fd00::$n/112" dev "$ifname" &&
		wg set "$ifname" private-key <(echo "$key") listen-port "$port" peer "$peer_pub" \
			preshared-key <(echo "$psk") allowed-ips "192.168.241.$((3 - n))/32,fd00::$((3 - n))/128" \
			endpoint "127.0.0.1:$peer_port" &&
		ip -n "$ns" link set up dev "$ifname"
}

# faults_restart_daemon N: a new daemon for IFn started in ns0, its interface moved to NSn and configured.
faults_restart_daemon() {
	local n=$1 ifname ns
	ifname=$([[ $n == 1 ]] && echo "$IF1" || echo "$IF2")
	ns=$([[ $n == 1 ]] && echo "$NS1" || echo "$NS2")
	start_daemon "$n" "$ifname" "$NS0" && ip -n "$NS0" link set "$ifname" netns "$ns" && faults_configure "$n"
}

# faults_forget_sessions ENDPOINT1 ENDPOINT2: both peers removed and added again (no session, no handshake
# state), IF1's peer pointing at ENDPOINT1, IF2's at ENDPOINT2.
faults_forget_sessions() {
	wg set "$IF1" peer "$pub2" remove && wg set "$IF2" peer "$pub1" remove &&
		wg set "$IF1" peer "$pub2" preshared-key <(echo "$psk") allowed-ips 192.168.241.2/32,fd00::2/128 \
			endpoint "$1" &&
		wg set "$IF2" peer "$pub1" preshared-key <(echo "$psk") allowed-ips 192.168.241.1/32,fd00::1/128 \
			endpoint "$2"
}

# ---------------------------------------------------------------------------------------------------------
# Verified transfers
# ---------------------------------------------------------------------------------------------------------

# faults_tcp_transfer NAME BYTES SECONDS [COMMAND...]: BYTES from ns1 to 192.168.241.2 (ns2); COMMAND (e.g. the
# loss) runs once the connection is open, before the first byte. Passes if everything arrives with the
# sender's sha256 within SECONDS.
faults_tcp_transfer() {
	local name=$1 bytes=$2 seconds=$3 ready connected go out sent_out rpid spid sent received
	shift 3
	ready=$(mktemp -u "$FGT_LOGDIR/tcp-ready-XXXXXX")
	connected=$(mktemp -u "$FGT_LOGDIR/tcp-connected-XXXXXX")
	go=$(mktemp -u "$FGT_LOGDIR/tcp-go-XXXXXX")
	out=$(mktemp "$FGT_LOGDIR/tcp-recv-XXXXXX")
	sent_out=$(mktemp "$FGT_LOGDIR/tcp-send-XXXXXX")
	in_ns "$NS2" timeout --foreground $((seconds + 10)) python3 "$FAULTS_PY" tcp-recv 192.168.241.2 5301 \
		"$ready" $((seconds + 5)) >"$out" 2>>"$FGT_LOGDIR/transfer.log" &
	rpid=$!
	FGT_PIDS+=("$rpid")
	if ! wait_ready_file "$ready" "$rpid"; then
		fail "$name" "the receiver did not start"
		return 1
	fi
	in_ns "$NS1" timeout --foreground $((seconds + 10)) python3 "$FAULTS_PY" tcp-send 192.168.241.2 5301 "$bytes" \
		"$connected" "$go" >"$sent_out" 2>>"$FGT_LOGDIR/transfer.log" &
	spid=$!
	FGT_PIDS+=("$spid")
	if ! wait_ready_file "$connected" "$spid"; then
		fail "$name" "the sender could not connect"
		kill_pids "$rpid" "$spid"
		return 1
	fi
	(($#)) && must "$@"
	touch "$go"
	# The receiver ends at the sender's end of data, or gives up after SECONDS + 5.
	wait_pid_exit "$rpid" $((seconds + 6)) || kill_pids "$rpid"
	wait "$rpid" 2>/dev/null
	wait_pid_exit "$spid" 5 || kill_pids "$spid"
	wait "$spid" 2>/dev/null
	sent=$(<"$sent_out") received=$(<"$out")
	fgt_log "sent: $sent; received: $received"
	# sent: BYTES SHA256 SECONDS (SECONDS: from the first byte until the receiver closed); received: BYTES SHA256
	if [[ -n $sent && ${sent% *} == "$received" && ${sent%% *} == "$bytes" ]] && faults_between "${sent##* }" 0 "$seconds"; then
		pass "$name"
		note "$bytes bytes in ${sent##* } s, sha256 ${received#* }"
		return 0
	fi
	fail "$name" "sent '${sent:-nothing}', received '${received:-nothing}' (bound $seconds s)"
	return 1
}

# ---------------------------------------------------------------------------------------------------------
# 1. Loss
# ---------------------------------------------------------------------------------------------------------

# faults_loss_set PERCENT: replace the loss table in ns0 (0: no table).
faults_loss_set() {
	ip netns exec "$NS0" nft delete table ip fgt_faults_loss 2>/dev/null
	(($1 == 0)) && return 0
	in_ns "$NS0" nft -f - <<-EOF
		table ip fgt_faults_loss {
			counter seen { }
			counter dropped { }
			chain pre {
				type filter hook prerouting priority -300; policy accept;
				udp sport { 1, 2 } udp dport { 1, 2 } counter name seen numgen random mod 100 < $1 counter name dropped drop
			}
		}
	EOF
}

# faults_nft_packets NS TABLE COUNTER
faults_nft_packets() {
	local out
	out=$(ip netns exec "$1" nft list counter ip "$2" "$3" 2>&1)
	[[ $out =~ packets\ ([0-9]+) ]] && printf '%s' "${BASH_REMATCH[1]}" || printf 0
}

# faults_loss_rate_check PERCENT: the loss the nftables table applied, over at least 1000 datagrams.
faults_loss_rate_check() {
	local percent=$1 seen dropped
	seen=$(faults_nft_packets "$NS0" fgt_faults_loss seen)
	dropped=$(faults_nft_packets "$NS0" fgt_faults_loss dropped)
	note "nftables dropped $dropped of $seen tunnel datagrams ($(awk -v d="$dropped" -v s="$seen" \
		'BEGIN { printf "%.1f", s ? 100 * d / s : 0 }') %)"
	check "faults: $percent % loss: the drop rate applied is within $percent ± 5 % (of $seen datagrams)" \
		awk -v d="$dropped" -v s="$seen" -v p="$percent" 'BEGIN { exit !(s >= 1000 && (100 * d / s - p)^2 <= 25) }'
}

# faults_loss_tcp PERCENT BYTES
faults_loss_tcp() {
	local percent=$1 bytes=$2
	faults_tcp_transfer "faults: $percent % loss both ways: a $((bytes >> 20)) MB TCP transfer arrives intact" \
		"$bytes" 40 faults_loss_set "$percent"
	faults_loss_rate_check "$percent"
	must faults_loss_set 0
}

# faults_loss_udp_check PERCENT COUNT DIRECTION RESULT: RESULT is udp-recv's line for the COUNT datagrams
# sent in DIRECTION; all that arrive are intact and unique, and (100 - PERCENT) ± 6 % of them arrive.
faults_loss_udp_check() {
	local percent=$1 count=$2 direction=$3 result=$4 unique
	note "$direction: $result"
	check "faults: $percent % loss both ways, $direction: every datagram that arrives is intact and arrives once" \
		eval '[[ $result =~ ^received\ [1-9][0-9]*\ unique\ [0-9]+\ duplicates\ 0\ corrupt\ 0$ ]]'
	unique=$(awk '{ print $4 }' <<<"$result")
	check "faults: $percent % loss both ways, $direction: $((100 - percent)) ± 6 % of $count datagrams arrive (${unique:-none})" \
		awk -v u="${unique:-0}" -v c="$count" -v p="$percent" 'BEGIN { exit !((100 * u / c - (100 - p))^2 <= 36) }'
}

# faults_udp_recv_start NS ADDR SECONDS GUARD OUT: faults.py udp-recv on ADDR port 5302 in NS for SECONDS
# (killed after GUARD seconds), its line to OUT; returns once it listens, its pid in FAULTS_UDP_RECV_PID.
faults_udp_recv_start() {
	local ns=$1 addr=$2 seconds=$3 guard=$4 out=$5 ready
	ready=$(mktemp -u "$FGT_LOGDIR/udp-ready-XXXXXX")
	in_ns "$ns" timeout --foreground "$guard" python3 "$FAULTS_PY" udp-recv "$addr" 5302 "$ready" "$seconds" >"$out" &
	FAULTS_UDP_RECV_PID=$!
	FGT_PIDS+=("$FAULTS_UDP_RECV_PID")
	must wait_ready_file "$ready" "$FAULTS_UDP_RECV_PID"
}

# faults_loss_udp PERCENT COUNT SIZE: COUNT numbered datagrams of SIZE bytes each way at once, paced (1 per ms)
# so that no socket buffer overflows: only the loss table removes datagrams.
faults_loss_udp() {
	local percent=$1 count=$2 size=$3 seconds out1 out2 pid1 pid2 spid
	seconds=$((count / 1000 + 5))
	out1=$(mktemp "$FGT_LOGDIR/udp-recv-XXXXXX") out2=$(mktemp "$FGT_LOGDIR/udp-recv-XXXXXX")
	faults_udp_recv_start "$NS2" 192.168.241.2 "$seconds" $((seconds + 5)) "$out2"
	pid2=$FAULTS_UDP_RECV_PID
	faults_udp_recv_start "$NS1" 192.168.241.1 "$seconds" $((seconds + 5)) "$out1"
	pid1=$FAULTS_UDP_RECV_PID
	must faults_loss_set "$percent"
	in_ns "$NS1" timeout --foreground "$seconds" python3 "$FAULTS_PY" udp-send 192.168.241.2 5302 "$count" "$size" &
	spid=$!
	FGT_PIDS+=("$spid")
	in_ns "$NS2" timeout --foreground "$seconds" python3 "$FAULTS_PY" udp-send 192.168.241.1 5302 "$count" "$size"
	wait "$spid" "$pid1" "$pid2" 2>/dev/null
	faults_loss_udp_check "$percent" "$count" "ns1 -> ns2" "$(<"$out2")"
	faults_loss_udp_check "$percent" "$count" "ns2 -> ns1" "$(<"$out1")"
	faults_loss_rate_check "$percent"
	must faults_loss_set 0
}

# faults_sniff_start SECONDS: records the handshake messages between ports 1 and 2 on ns0's loopback.
faults_sniff_start() {
	local ready
	ready=$(mktemp -u "$FGT_LOGDIR/sniff-ready-XXXXXX")
	FAULTS_SNIFF=$(mktemp "$FGT_LOGDIR/sniff-XXXXXX")
	in_ns "$NS0" timeout --foreground $(($1 + 5)) python3 "$FAULTS_PY" sniff lo 1,2 "$FAULTS_SNIFF" "$ready" "$1" \
		2>>"$FGT_LOGDIR/sniff.log" &
	FAULTS_SNIFF_PID=$!
	FGT_PIDS+=("$FAULTS_SNIFF_PID")
	wait_ready_file "$ready" "$FAULTS_SNIFF_PID"
}

faults_sniff_stop() {
	kill_pids "$FAULTS_SNIFF_PID"
	wait "$FAULTS_SNIFF_PID" 2>/dev/null
}

# faults_drop_initiations PORT K: an nftables quota drops the first K handshake initiations to PORT
# (an initiation is a 176-byte IPv4 packet: 20 + 8 + 148).
faults_drop_initiations() {
	ip netns exec "$NS0" nft delete table ip fgt_faults_hs 2>/dev/null
	in_ns "$NS0" nft -f - <<-EOF
		table ip fgt_faults_hs {
			chain pre {
				type filter hook prerouting priority -300; policy accept;
				udp dport $1 @th,64,8 1 quota until $(($2 * 176 + 88)) bytes counter drop
			}
		}
	EOF
}

# faults_handshake_retry N K: implementation N initiates, the first K initiations are dropped.
faults_handshake_retry() {
	local n=$1 k=$2 src_ns dst dport inits intervals count first_init response up_s ok=1 bad
	if [[ $n == 1 ]]; then src_ns=$NS1 dst=192.168.241.2 dport=2; else src_ns=$NS2 dst=192.168.241.1 dport=1; fi
	local p="faults: impl$n initiates, first $k initiation(s) dropped"
	must faults_forget_sessions 127.0.0.1:2 127.0.0.1:1
	must faults_drop_initiations "$dport" "$k"
	must faults_sniff_start $((k * 6 + 8))
	# One ping a second for up to K * 6 + 5 s; it ends at the first reply.
	in_ns "$src_ns" timeout --foreground $((k * 6 + 8)) ping -n -c 1 -w $((k * 6 + 5)) "$dst" >>"$FGT_LOGDIR/ping.log" 2>&1
	local ping_rc=$?
	sleep 0.2
	faults_sniff_stop
	ip netns exec "$NS0" nft delete table ip fgt_faults_hs 2>/dev/null
	fgt_log "sniffed: $(tr '\n' ';' <"$FAULTS_SNIFF")"
	# Initiations to DPORT before the first response from DPORT.
	response=$(awk -v p="$dport" '$2 == 2 && $3 == p { print $1; exit }' "$FAULTS_SNIFF")
	inits=$(awk -v p="$dport" -v r="${response:-9e99}" '$2 == 1 && $4 == p && $1 < r { print $1 }' "$FAULTS_SNIFF")
	count=$(grep -c . <<<"$inits")
	first_init=$(head -n 1 <<<"$inits")
	intervals=$(awk 'NR > 1 { printf "%.3f ", $1 - last } { last = $1 }' <<<"$inits")
	up_s=$(awk -v a="$first_init" -v b="$response" 'BEGIN { if (a != "" && b != "") printf "%.3f", b - a; else print "none" }')
	note "initiations seen: $count, intervals (s): ${intervals:-none}, first initiation to response: $up_s s"
	check "$p: exactly $((k + 1)) initiations before the response" test "$count" -eq $((k + 1))
	bad=$(awk '{ for (i = 1; i <= NF; i++) if ($i < 4.9 || $i > 5.733) print $i }' <<<"$intervals")
	[[ -n $intervals && -z $bad ]] || ok=0
	check "$p: each retry after REKEY_TIMEOUT + jitter, in [4.9, 5.733] s (measured: ${intervals:-none})" test "$ok" -eq 1
	check "$p: the session comes up (ping answered, response after $up_s s)" \
		eval '((ping_rc == 0)) && [[ -n $response ]]'
}

# faults_loss: the handshake checks come first, while nothing else is in flight (a late TCP retransmission
# of a lossy transfer would start a handshake of its own).
faults_loss() {
	# The pairs after the first (FGT_QUICK=1) keep the case where implementation 2 initiates: over the two
	# mixed pairs that still has Ferroguard both initiate to and answer the other implementation.
	if [[ ${FGT_QUICK:-0} == 1 ]]; then
		skip "faults: impl1 initiates, first 2 initiation(s) dropped" \
			"quick run: the mixed pairs keep the case where impl2 initiates (Ferroguard initiates in one, answers in the other)"
	else
		faults_handshake_retry 1 2
	fi
	faults_handshake_retry 2 1
	# Loopback passes UDP GSO batches (up to 64 datagrams) as one packet through nftables: with at most one
	# segment per packet the kernel splits them before ns0's prerouting hook, so the loss is per datagram.
	must ip0 link set dev lo gso_max_segs 1
	# The TCP endpoints' retransmission timer starts at 20 ms instead of 200 ms (and the connection is open
	# before the loss starts: no 1 s SYN timer), so that chains of doubling timeouts do not decide the
	# 10 % check. What is measured is the tunnel, not TCP's backoff; at 30 % UDP is used (header, 1.).
	must ip1 route add 192.168.241.2/32 dev "$IF1" rto_min 20ms
	must ip2 route add 192.168.241.1/32 dev "$IF2" rto_min 20ms
	faults_loss_tcp 10 $((4 << 20))
	faults_loss_udp 30 2000 1200
	must ip1 route del 192.168.241.2/32 dev "$IF1"
	must ip2 route del 192.168.241.1/32 dev "$IF2"
	must ip0 link set dev lo gso_max_segs 65535
	check "faults: session up after the loss tests" ping_all "$NS1" 192.168.241.2 5
}

# ---------------------------------------------------------------------------------------------------------
# 2. Reordering, duplication, delay (faults.py relay)
# ---------------------------------------------------------------------------------------------------------

faults_relay() { relay_ctrl "$FAULTS_CTRL_PORT" "$1"; }

# faults_relay_stat PORT FIELD: from the relay's statistics (since its last reset).
faults_relay_stat() {
	faults_relay stats | python3 "$FGT_NET_PY" json-field "$1" "$2"
}

# faults_udp_drops PORT: datagrams the kernel dropped (receive buffer full) on ns0's sockets bound to PORT.
faults_udp_drops() {
	ip netns exec "$NS0" cat /proc/net/udp /proc/net/udp6 2>/dev/null |
		awk -v port="$(printf '%04X' "$1")" '{ split($2, local, ":") } local[2] == port { sum += $NF } END { print sum + 0 }'
}

# faults_rx_matches IFNAME PORT DIVISOR: IFNAME's rx growth since FAULTS_RX_BASE[IFNAME] equals the bytes the
# relay delivered to PORT divided by DIVISOR: every datagram was accepted once, none refused. Datagrams the
# kernel dropped before the daemon could read them (its socket's receive buffer was full: the relay releases
# a whole window at once) never reached the daemon: for those, at most 1452 bytes each (a full datagram) may
# be missing. (A second look after 0.5 s covers a datagram still in flight.)
declare -A FAULTS_RX_BASE=() FAULTS_DROPS_BASE=()
faults_rx_matches() {
	local i delivered grown drops deficit
	for i in 1 2; do
		delivered=$(faults_relay_stat "$2" bytes)
		grown=$(($(wg_rx_bytes "$1") - FAULTS_RX_BASE[$1]))
		drops=$(($(faults_udp_drops "$2") - FAULTS_DROPS_BASE[$2]))
		fgt_log "$1: rx grew by $grown, relay delivered $delivered / $3, kernel dropped $drops"
		[[ $delivered =~ ^[0-9]+$ ]] && ((delivered > 0)) || continue
		deficit=$((delivered / $3 - grown))
		((deficit == 0 || (deficit > 0 && deficit <= drops * 1452))) && break
		sleep 0.5
	done
	note "$1: rx grew by $grown bytes, the relay delivered $delivered bytes (/ $3), the kernel dropped $drops datagrams before the daemon read them"
	((delivered > 0 && (deficit == 0 || (deficit > 0 && deficit <= drops * 1452))))
}

# faults_relay_phase SETTINGS: new relay settings, statistics zeroed, rx counters noted.
faults_relay_phase() {
	must faults_relay "set $1"
	sleep 0.1
	must faults_relay reset
	FAULTS_RX_BASE[$IF1]=$(wg_rx_bytes "$IF1")
	FAULTS_RX_BASE[$IF2]=$(wg_rx_bytes "$IF2")
	FAULTS_DROPS_BASE[1]=$(faults_udp_drops 1)
	FAULTS_DROPS_BASE[2]=$(faults_udp_drops 2)
}

faults_reorder() {
	local ooo
	faults_relay_phase "reorder=64 dup=0 delay=0"
	faults_tcp_transfer "faults: reordering within 64 datagrams: a 4 MB TCP transfer arrives intact" $((4 << 20)) 40
	ooo=$(faults_relay_stat 2 out_of_order)
	note "relay: $ooo of $(faults_relay_stat 2 data_datagrams) data datagrams to ns2 delivered behind a higher counter"
	check "faults: reordering: the relay did deliver datagrams out of order ($ooo)" test "${ooo:-0}" -gt 0
	check "faults: reordering: ns2's daemon accepted every datagram that reached it (rx = relay's bytes)" \
		faults_rx_matches "$IF2" 2 1
	check "faults: reordering: ns1's daemon accepted every datagram that reached it (rx = relay's bytes)" \
		faults_rx_matches "$IF1" 1 1
}

faults_duplicate() {
	local out rpid result dups
	faults_relay_phase "reorder=0 dup=1 delay=0"
	out=$(mktemp "$FGT_LOGDIR/udp-recv-XXXXXX")
	faults_udp_recv_start "$NS2" 192.168.241.2 6 15 "$out"
	rpid=$FAULTS_UDP_RECV_PID
	in_ns "$NS1" timeout --foreground 10 python3 "$FAULTS_PY" udp-send 192.168.241.2 5302 500 0
	wait "$rpid" 2>/dev/null
	result=$(<"$out")
	dups=$(faults_relay_stat 2 duplicates)
	note "UDP burst of 500 through a duplicating relay: $result; relay duplicated $dups datagrams to ns2"
	check "faults: duplication: the relay sent at least 500 duplicates ($dups)" test "${dups:-0}" -ge 500
	check "faults: duplication: every datagram delivered exactly once ($result)" \
		equals udp "$result" "received 500 unique 500 duplicates 0 corrupt 0"
	check "faults: duplication: ns2's daemon counted each datagram once (rx = half the relay's bytes)" \
		faults_rx_matches "$IF2" 2 2
}

faults_delay() {
	local out rtts
	faults_relay_phase "reorder=0 dup=0 delay=50"
	must faults_forget_sessions "127.0.0.1:$FAULTS_RELAY_PORT" "127.0.0.1:$FAULTS_RELAY_PORT"
	out=$(in_ns "$NS1" timeout --foreground 15 ping -n -c 5 -i 0.2 -W 3 192.168.241.2 2>&1)
	fgt_log "$out"
	# rtt min/avg/max/mdev = a/b/c/d ms
	rtts=$(sed -n 's|^rtt min/avg/max/mdev = \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\)/.*|\1 \2 \3|p' <<<"$out")
	note "50 ms each way: ping rtt min/avg/max ${rtts:-none} ms (the first one includes the handshake)"
	check "faults: 50 ms delay: the handshake completes, 5 pings answered" \
		eval '[[ $out =~ 5\ packets\ transmitted,\ 5\ received ]]'
	check "faults: 50 ms delay: ping rtt reflects it (min ≥ 100 ms, avg ≤ 400 ms; measured ${rtts:-none})" \
		eval 'set -- $rtts; faults_between "${1:-}" 100 400 && faults_between "${2:-}" 100 400'
}

faults_relay_checks() {
	must relay_start "$FAULTS_PY" "$FAULTS_RELAY_PORT" 1 2 "$FAULTS_CTRL_PORT"
	must wgc set "$IF1" peer "$pub2" endpoint "127.0.0.1:$FAULTS_RELAY_PORT"
	must wgc set "$IF2" peer "$pub1" endpoint "127.0.0.1:$FAULTS_RELAY_PORT"
	check "faults: session up through the relay" ping_all "$NS1" 192.168.241.2 5
	faults_reorder
	faults_duplicate
	faults_delay
	must faults_relay "set reorder=0 dup=0 delay=0"
	must wgc set "$IF1" peer "$pub2" endpoint 127.0.0.1:2
	must wgc set "$IF2" peer "$pub1" endpoint 127.0.0.1:1
	kill_pids "$RELAY_PID"
	wait "$RELAY_PID" 2>/dev/null
	check "faults: direct session again after the relay" ping_retry "$NS1" 192.168.241.2
}

# ---------------------------------------------------------------------------------------------------------
# 3. A peer restarts mid-transfer
# ---------------------------------------------------------------------------------------------------------

# faults_iface_absent NS IFNAME SECONDS: true once the interface is gone.
faults_iface_absent() {
	local i
	for ((i = 0; i < $3 * 20; i++)); do
		ip -n "$1" link show dev "$2" &>/dev/null || return 0
		sleep 0.05
	done
	return 1
}

faults_restart() {
	local n=$1 ns ifname dst log pid restarted kill_time gaps first i
	if [[ $n == 1 ]]; then ns=$NS1 ifname=$IF1 dst=192.168.241.2; else ns=$NS2 ifname=$IF2 dst=192.168.241.1; fi
	local p="faults: impl$n killed (SIGKILL) and restarted during a ping"
	faults_ping_start "$ns" "$dst" 0.2 20 25
	log=$FAULTS_PING_LOG
	pid=${FGT_DAEMON_PID[$ifname]}
	kill_time=$(faults_now)
	kill -KILL "$pid"
	wait "$pid" 2>/dev/null
	must faults_iface_absent "$ns" "$ifname" 5
	must faults_restart_daemon "$n"
	restarted=$(faults_now)
	note "impl$n restarted and configured $(faults_elapsed_ms "$kill_time") ms after the kill"
	first=$(faults_wait_first_reply "$log" "$restarted" 80)
	faults_ping_stop
	gaps=$(faults_py ping-gaps "$log" "$kill_time")
	note "ping: $gaps (from the kill); $first (from the restart)"
	[[ $first =~ first_after\ ([0-9.]+) ]]
	local after=${BASH_REMATCH[1]:-}
	check "$p: replies resume ≤ $FGT_ONE_RETRY_S s after the restart (REKEY_TIMEOUT + jitter + 1 s; measured ${after:-never} s)" \
		faults_between "$after" 0 "$FGT_ONE_RETRY_S"
	check "$p: replies before the kill (the ping was running)" eval '[[ $gaps =~ last_before\ [0-9] ]]'
}

# ---------------------------------------------------------------------------------------------------------
# 4. NAT expiry and roaming
# ---------------------------------------------------------------------------------------------------------

# faults_nat_rule PORTS: the SNAT of ns1's UDP towards ns2, to 10.0.0.1:PORTS (replacing the table).
faults_nat_rule() {
	ip netns exec "$NS0" nft delete table ip fgt_faults_nat 2>/dev/null
	in_ns "$NS0" nft -f - <<-EOF
		table ip fgt_faults_nat {
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				ip saddr 192.168.1.0/24 ip daddr 10.0.0.0/24 meta l4proto udp snat to 10.0.0.1:$1
			}
		}
	EOF
}

faults_nat_topology() {
	IF3=$(ifname c) IF4=$(ifname d)
	pub3=$(wg pubkey <<<"$key3") pub4=$(wg pubkey <<<"$key4")
	must start_daemon 1 "$IF3" "$NS1"
	must start_daemon 2 "$IF4" "$NS2"
	# Promoting secondaries keeps the route when the client's primary address is removed (roaming check).
	must sysctl_ns "$NS1" net/ipv4/conf/all/promote_secondaries 1
	must sysctl_ns "$NS1" net/ipv4/conf/default/promote_secondaries 1
	nat_links
	must faults_nat_rule 20001
	must ip1 addr add 192.168.242.1/24 dev "$IF3"
	must ip2 addr add 192.168.242.2/24 dev "$IF4"
	# The server first: the client's keepalive starts a handshake as soon as it is configured.
	must wgc set "$IF4" private-key <(echo "$key4") listen-port 2 peer "$pub3" allowed-ips 192.168.242.1/32
	must wgc set "$IF3" private-key <(echo "$key3") listen-port 1 peer "$pub4" allowed-ips 192.168.242.2/32 \
		endpoint 10.0.0.100:2 persistent-keepalive 1
	must ip1 link set up dev "$IF3"
	must ip2 link set up dev "$IF4"
}

# faults_server_endpoint: where the server (IF4) sees the client.
faults_server_endpoint() { wg show "$IF4" endpoints 2>/dev/null | cut -f2; }

# faults_nat_event NAME BEFORE ACTION...: during a ping from the server side, run ACTION; the server must
# learn a new endpoint (10.0.0.1:20002-20009, not BEFORE) and its pings resume within 3 s.
faults_nat_event() {
	local name=$1 before=$2 log start endpoint i first gaps
	shift 2
	faults_ping_start "$NS2" 192.168.242.1 0.1 12 20
	log=$FAULTS_PING_LOG
	must "$@"
	start=$(faults_now)
	for ((i = 0; i < 100; i++)); do
		endpoint=$(faults_server_endpoint)
		[[ $endpoint != "$before" ]] && break
		sleep 0.05
	done
	note "$name: the server saw the client move from $before to $endpoint after $(faults_elapsed_ms "$start") ms"
	first=$(faults_wait_first_reply "$log" "$start" 50)
	sleep 0.5
	faults_ping_stop
	gaps=$(faults_py ping-gaps "$log" "$start")
	note "$name: ping from the server side: $gaps"
	[[ $first =~ first_after\ ([0-9.]+) ]]
	local after=${BASH_REMATCH[1]:-}
	[[ $gaps =~ max_gap\ ([0-9.]+) ]]
	local outage=${BASH_REMATCH[1]:-}
	check "$name: the server learns the new endpoint ($endpoint, was $before)" \
		eval '[[ $endpoint =~ ^10\.0\.0\.1:2000[2-9]$ && $endpoint != "$before" ]]'
	check "$name: the server's pings are answered again ≤ 3 s later (keepalive 1 s + 2 s; measured ${after:-never} s, longest gap ${outage:-?} s)" \
		eval 'faults_between "$after" 0 3 && faults_between "$outage" 0 3'
	FAULTS_ENDPOINT=$endpoint
}

# faults_nat_reboot: a new SNAT port range, and every mapping forgotten.
faults_nat_reboot() { faults_nat_rule 20002-20009 && in_ns "$NS0" python3 "$FAULTS_PY" ct-flush; }

# faults_client_moves: the client's address changes from .100 to .101 (the secondary is promoted).
faults_client_moves() {
	ip -n "$NS1" addr add 192.168.1.101/24 dev vethc && ip -n "$NS1" addr del 192.168.1.100/24 dev vethc &&
		ip -n "$NS1" route replace default via 192.168.1.1
}

faults_nat() {
	faults_nat_topology
	check "faults: NAT: session up through the SNAT (client -> server)" ping_retry "$NS1" 192.168.242.2
	check "faults: NAT: the server sees the client at 10.0.0.1:20001" endpoint_is "$IF4" "$pub3" 10.0.0.1:20001
	faults_nat_event "faults: NAT mapping lost (new SNAT port, conntrack flushed)" 10.0.0.1:20001 faults_nat_reboot
	if supported sticky_v4_source_gone "faults: client address changed mid-transfer" 1; then
		faults_nat_event "faults: client address changed mid-transfer (192.168.1.100 -> .101)" "$FAULTS_ENDPOINT" \
			faults_client_moves
	fi
}

# ---------------------------------------------------------------------------------------------------------
# 5. Lifecycle under traffic
# ---------------------------------------------------------------------------------------------------------

# faults_flood_start: ns2 flood-pings 192.168.241.1 in the background (until faults_flood_stop).
faults_flood_start() {
	in_ns "$NS2" timeout --foreground 60 ping -n -q -f -w 50 192.168.241.1 >>"$FGT_LOGDIR/flood.log" 2>&1 &
	FAULTS_FLOOD_PID=$!
	FGT_PIDS+=("$FAULTS_FLOOD_PID")
}

faults_flood_stop() {
	kill -INT "$FAULTS_FLOOD_PID" 2>/dev/null
	wait_pid_exit "$FAULTS_FLOOD_PID" 3 || kill_pids "$FAULTS_FLOOD_PID"
	wait "$FAULTS_FLOOD_PID" 2>/dev/null
}

# faults_traffic_flowing: IF1 receives data (its rx counter grows within 0.5 s).
faults_traffic_flowing() {
	local before after
	before=$(wg_rx_bytes "$IF1")
	sleep 0.5
	after=$(wg_rx_bytes "$IF1")
	FAULTS_FLOW=$((after - before))
	fgt_log "IF1 rx grew by $FAULTS_FLOW bytes in 0.5 s"
	((FAULTS_FLOW > 0))
}

# faults_processes_for IFNAME: pids of processes serving IFNAME (a command line ending in "-f IFNAME").
faults_processes_for() { pgrep -f -- "-f $1\$" | tr '\n' ' '; }

# faults_exit_check NAME SECONDS STATUS: the daemon of IF1 exits within SECONDS with STATUS and leaves nothing.
faults_exit_check() {
	local name=$1 seconds=$2 expected=$3 pid start status elapsed left
	pid=${FGT_DAEMON_PID[$IF1]}
	start=$FAULTS_ACTION_TIME
	if wait_pid_exit "$pid" "$seconds"; then
		elapsed=$(faults_elapsed_ms "$start")
		wait "$pid" 2>/dev/null
		status=$?
	else
		elapsed=never status=running
	fi
	note "$name: the daemon exited after $elapsed ms with status $status"
	check "$name: the daemon exits within $seconds s (measured $elapsed ms)" test "$status" != running
	check "$name: exit status $expected" equals status "$status" "$expected"
	check "$name: no socket file and no interface left" wait_gone "$IF1" 2
	left=$(faults_processes_for "$IF1")
	check "$name: no process left for $IF1" equals processes "$left" ""
}

# faults_back NAME: a new daemon for IF1 starts at once and the tunnel works again.
faults_back() {
	local start
	start=$(faults_now)
	check "$1: a new daemon for the same name starts" faults_restart_daemon 1
	note "$1: new daemon started and configured in $(faults_elapsed_ms "$start") ms"
	check "$1: the tunnel works again" ping_retry "$NS1" 192.168.241.2
}

# faults_lifecycle_event NAME ACTION...: ACTION during the flood; the daemon must exit cleanly.
faults_lifecycle_event() {
	local name=$1
	shift
	faults_flood_start
	check "$name: traffic flows before" faults_traffic_flowing
	note "$name: $FAULTS_FLOW bytes received by impl1 in 0.5 s before"
	FAULTS_ACTION_TIME=$(faults_now)
	must "$@"
	faults_exit_check "$name" 3 0
	faults_flood_stop
	faults_back "$name"
}

faults_move() {
	local name="faults: interface moved to another namespace under traffic" ns3
	ns3="$FGT_PREFIX-$FGT_OWNER-$FGT_ID-3"
	must make_namespace "$ns3"
	faults_flood_start
	check "$name: traffic flows before" faults_traffic_flowing
	must ip1 link set dev "$IF1" netns "$ns3"
	sleep 2
	check "$name: the daemon keeps running, its socket answers" \
		eval 'pid_running "${FGT_DAEMON_PID[$IF1]}" && wg show "$IF1" >/dev/null'
	check "$name: its UDP socket stays in ns0" eval '[[ -n $(ss -N "$NS0" -ulnH "sport = :1") ]]'
	must ip -n "$ns3" addr add 192.168.241.1/24 dev "$IF1"
	must ip -n "$ns3" link set up dev "$IF1"
	check "$name: the tunnel works from the new namespace" ping_retry "$ns3" 192.168.241.2
	check "$name: the daemon still receives the flood" faults_traffic_flowing
	# (d) SIGTERM under traffic, the interface still in the other namespace.
	FAULTS_ACTION_TIME=$(faults_now)
	kill -TERM "${FGT_DAEMON_PID[$IF1]}"
	faults_exit_check "faults: SIGTERM under traffic (interface in another namespace)" 5 0
	faults_flood_stop
	faults_back "faults: SIGTERM under traffic"
}

faults_lifecycle() {
	faults_lifecycle_event "faults: ip link del under traffic" ip1 link del dev "$IF1"
	faults_lifecycle_event "faults: socket file removed under traffic" rm -f -- "$(sock_path "$IF1")"
	faults_move
}

scenario_faults() {
	topo_loopback
	endpoints_v4
	faults_loss
	faults_relay_checks
	faults_restart 2
	faults_restart 1
	faults_nat
	# Section 5 happens to implementation 1's daemon alone: the first pair checks Ferroguard's.
	if [[ ${FGT_QUICK:-0} == 1 ]]; then
		skip "faults: interface, socket and namespace events under traffic" \
			"quick run: they happen to implementation 1's daemon alone (the first pair checks Ferroguard's)"
	else
		faults_lifecycle
	fi
}
