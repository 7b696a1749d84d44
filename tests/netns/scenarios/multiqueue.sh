# shellcheck shell=bash
# Scenario "multiqueue": the parallel data path (FERROGUARD_IO_THREADS=queues:N, ARCHITECTURE.md "Parallel data
# path") with offloads on: a multi-queue TUN and a socket group per ferroguard daemon, several peers and several
# flows per peer. The gateway topology of scenarios/gateway.sh with MQ_CLIENTS clients; every ferroguard daemon
# runs with queues:MQ_LANES (a wireguard-go side runs as it always does, so the mixed pairs test ferroguard's
# multi-queue side against it) and --metrics-listen on 127.0.0.1 of its own namespace.
#   Checks:
#     - every ferroguard interface has MQ_LANES queues (/sys/class/net/IF/queues/tx-*);
#     - numbered UDP, MQ_FLOWS flows per client, all clients at once, to the server and from the server (each
#       flow its own source port): every datagram arrives once, and none after a higher one of its own flow
#       (the flow is read from one TUN queue by one thread and its counters are sent in order);
#     - TCP, iperf3 with MQ_STREAMS parallel streams from every client at once: every client moves data;
#     - the server's lanes: more than one lane read packets from its TUN queue (the data path really ran on
#       several threads); the per-lane counts are printed as a note;
#     - no replay drops at the server nor at any ferroguard client: threads that interleave one peer's
#       counters stay inside the replay window.
# multiqueue_plain.sh runs the same with queues:4 and FERROGUARD_NO_OFFLOAD=1. About 30 s per pair.

MQ_CLIENTS=3
MQ_FLOWS=4
MQ_COUNT=1000
MQ_STREAMS=4
MQ_SECONDS=3
MQ_METRICS=127.0.0.1:9587
MQ_PY="$(dirname "${BASH_SOURCE[0]}")/multiqueue.py"

# multiqueue_scrape NS OUT: the metrics of the daemon in NS into OUT; true on status 200.
multiqueue_scrape() {
	[[ $(in_ns "$1" timeout --foreground 10 python3 "$METRICS_PY" scrape "http://$MQ_METRICS/metrics" "$2") == 200 ]]
}

# multiqueue_queues NS IF: the number of transmit queues the kernel shows for IF in NS.
multiqueue_queues() {
	in_ns "$1" sh -c "ls /sys/class/net/$2/queues" | grep -c '^tx-'
}

# multiqueue_udp DIR: numbered UDP flows between the server and every client, all at once; DIR "up" (clients
# send) or "down" (the server sends). One check per client.
multiqueue_udp() {
	local dir=$1 i ns src dst addr port ready out summary
	local -a rpids=() spids=() outs=()
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		ns=$(gateway_ns "$i") port=$((5600 + i))
		if [[ $dir == up ]]; then src=$ns dst=$NS1 addr=10.79.0.1
		else src=$NS1 dst=$ns addr=10.79.0.$((10 + i)); fi
		ready=$(mktemp -u "$FGT_LOGDIR/mq-ready-XXXXXX")
		out=$(mktemp "$FGT_LOGDIR/mq-recv-XXXXXX")
		in_ns "$dst" timeout --foreground 40 python3 "$MQ_PY" flows-recv "$addr" "$port" "$ready" 30 \
			"$MQ_FLOWS" "$MQ_COUNT" >"$out" &
		rpids+=($!)
		FGT_PIDS+=($!)
		must wait_ready_file "$ready" "$!" "UDP flow receiver"
		outs+=("$out")
	done
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		ns=$(gateway_ns "$i") port=$((5600 + i))
		if [[ $dir == up ]]; then src=$ns addr=10.79.0.1; else src=$NS1 addr=10.79.0.$((10 + i)); fi
		in_ns "$src" timeout --foreground 30 python3 "$MQ_PY" flows-send "$addr" "$port" "$MQ_FLOWS" "$MQ_COUNT" \
			2>>"$FGT_LOGDIR/mq-send.log" &
		spids+=($!)
		FGT_PIDS+=($!)
	done
	wait "${spids[@]}" "${rpids[@]}" 2>/dev/null
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		summary=$(<"${outs[$((i - 1))]}")
		local name="multiqueue: client $i, $MQ_FLOWS UDP flows $([[ $dir == up ]] && echo to || echo from) the server, all clients at once: nothing lost, nothing reordered within a flow"
		if [[ $summary == "flows $MQ_FLOWS datagrams $((MQ_FLOWS * MQ_COUNT)) lost 0 reordered 0 duplicates 0 "* ]]; then
			pass "$name ($summary)"
		else
			fail "$name" "${summary:-no summary}; packets the sending TUN dropped (tx_dropped, a reader too slow): $(
				multiqueue_tun_drops "$dir" "$i")"
		fi
	done
}

# multiqueue_tun_drops DIR I: the tx_dropped count of the TUN that sent the flows of client I in direction DIR.
multiqueue_tun_drops() {
	if [[ $1 == up ]]; then
		in_ns "$(gateway_ns "$2")" cat "/sys/class/net/$(gateway_if "$2")/statistics/tx_dropped"
	else
		in_ns "$NS1" cat "/sys/class/net/$IF1/statistics/tx_dropped"
	fi
}

# multiqueue_replays FILE: the sum of the replay drops of every peer in a scrape.
multiqueue_replays() {
	awk '/^ferroguard_peer_drops_total\{/ && /reason="replay"/ { sum += $2 } END { print sum + 0 }' "$1"
}

# multiqueue_run LANES: the scenario with FERROGUARD_IO_THREADS=queues:LANES (FERROGUARD_NO_OFFLOAD as the
# caller exported it).
multiqueue_run() {
	local lanes=$1 i ns n scrape busy counts replays client_waits=0
	export FERROGUARD_IO_THREADS="queues:$lanes"
	GATEWAY_CLIENTS=$MQ_CLIENTS
	[[ $(impl_kind 1) == ferroguard ]] && WG_IMPL1="$WG_IMPL1 --metrics-listen $MQ_METRICS"
	[[ $(impl_kind 2) == ferroguard ]] && WG_IMPL2="$WG_IMPL2 --metrics-listen $MQ_METRICS"
	gateway_up
	if [[ $(impl_kind 1) == ferroguard ]]; then
		n=$(multiqueue_queues "$NS1" "$IF1")
		check "multiqueue: the server's TUN has $lanes queues (has $n)" test "$n" -eq "$lanes"
	else
		skip "multiqueue: the server's TUN has $lanes queues" "implementation 1 is not ferroguard (single queue)"
	fi
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		[[ $(impl_kind 2) == ferroguard ]] || break
		n=$(multiqueue_queues "$(gateway_ns "$i")" "$(gateway_if "$i")")
		check "multiqueue: client $i's TUN has $lanes queues (has $n)" test "$n" -eq "$lanes"
	done
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		check "multiqueue: client $i reaches the server" \
			in_ns "$(gateway_ns "$i")" ping -c 2 -i 0.2 -W 3 10.79.0.1
	done
	multiqueue_udp up
	multiqueue_udp down
	gateway_iperf_all "$FGT_LOGDIR/mq-tcp" -P "$MQ_STREAMS"
	gateway_served "$FGT_LOGDIR/mq-tcp" "multiqueue: client %s: TCP with $MQ_STREAMS streams, all clients at once"
	if [[ $(impl_kind 1) == ferroguard ]]; then
		scrape="$FGT_LOGDIR/mq-metrics-server.txt"
		check "multiqueue: the server's metrics can be read" multiqueue_scrape "$NS1" "$scrape"
		counts=$(awk '/^ferroguard_lane_packets_total\{/ && /direction="tun"/ { printf "%s ", $2 }' "$scrape")
		busy=$(awk '/^ferroguard_lane_packets_total\{/ && /direction="tun"/ && $2 > 0 { n++ } END { print n + 0 }' "$scrape")
		note "multiqueue: the server's packets read per TUN queue: $counts; received per lane: $(awk \
			'/^ferroguard_lane_packets_total\{/ && /direction="udp"/ { printf "%s ", $2 }' "$scrape")"
		check "multiqueue: more than one of the server's $lanes lanes read packets from its TUN ($busy did)" \
			test "$busy" -gt 1
		replays=$(multiqueue_replays "$scrape")
		check "multiqueue: the server counted no replay drops (counted $replays)" test "$replays" -eq 0
		note "multiqueue: the server's per-peer send bound: $(awk \
			'/^ferroguard_send_room_(waits|drops)_total\{/ { sub(/\{.*/, "", $1); printf "%s %s ", $1, $2 }' "$scrape")"
	else
		skip "multiqueue: the server's lanes and replay drops" "implementation 1 is not ferroguard (no metrics)"
	fi
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		[[ $(impl_kind 2) == ferroguard ]] || { skip "multiqueue: the clients' replay drops" \
			"implementation 2 is not ferroguard (no metrics)"; break; }
		ns=$(gateway_ns "$i") scrape="$FGT_LOGDIR/mq-metrics-client-$i.txt"
		if multiqueue_scrape "$ns" "$scrape"; then
			replays=$(multiqueue_replays "$scrape")
			check "multiqueue: client $i counted no replay drops (counted $replays)" test "$replays" -eq 0
			note "multiqueue: client $i's per-peer send bound: $(awk \
				'/^ferroguard_send_room_(waits|drops)_total\{/ { sub(/\{.*/, "", $1); printf "%s %s ", $1, $2 }' "$scrape")"
			n=$(awk '/^ferroguard_send_room_waits_total\{/ { print $2 }' "$scrape")
			client_waits=$((client_waits + ${n:-0}))
		else
			fail "multiqueue: client $i counted no replay drops" "no metrics"
		fi
	done
	if [[ -n ${FERROGUARD_SEND_LEAD_LIMIT:-} && $(impl_kind 2) == ferroguard ]]; then
		# The clients upload TCP over both lanes to their one peer: with a low
		# bound their lanes must have waited for each other (or themselves).
		check "multiqueue: with a lead limit of $FERROGUARD_SEND_LEAD_LIMIT the clients' lanes waited for room ($client_waits times)" \
			test "$client_waits" -gt 0
	fi
}

scenario_multiqueue() {
	unset FERROGUARD_NO_OFFLOAD
	multiqueue_run 2
}
