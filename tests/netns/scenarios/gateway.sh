#!/bin/bash
# Scenario "gateway": one server and GATEWAY_CLIENTS clients, each client its own namespace and daemon, all
# sending at once.
#
#   ns0 holds a bridge; the server (impl1, ns1, tunnel 10.79.0.1 and fd79::1) and every client (impl2, its own
#   namespace, tunnel 10.79.0.(10+i) and fd79::(10+i)) hang on it by a veth, and their daemons' UDP sockets live
#   in their own namespaces (underlay 192.0.2.0/24). So with the pairs ferroguard/wireguard-go and
#   wireguard-go/ferroguard each implementation is the server once and the clients once.
#   Checks:
#     - handshakes under load: no client has a session when the load starts, and all start at once; every
#       client's handshake completes within GATEWAY_HANDSHAKE_S seconds of the start. An initiation that went
#       unanswered is retried only after REKEY_TIMEOUT (5 s), so a lost one fails the check (with a wireguard-go
#       server one retry is allowed, GATEWAY_HANDSHAKE_RETRY_S: see there);
#     - TCP, all clients at once (iperf3 to one server each, GATEWAY_SECONDS): every client is served (moves
#       data); the aggregate and Jain's fairness index over the clients' goodputs are printed as notes (the
#       speed targets are benchmarks: scripts/bench.sh --gateway N);
#     - integrity, all clients at once: GATEWAY_BYTES of pseudo-random bytes from every client (IPv4 inside)
#       arrive with the sender's sha256, and the same back from the server to every client over IPv6 inside;
#     - UDP at a fixed rate, all clients at once: every client gets at least 90 % of GATEWAY_UDP_RATE through;
#     - afterwards the server holds a session with every client.
#   About 30 s per pair.

GATEWAY_CLIENTS=8
GATEWAY_SECONDS=3
GATEWAY_BYTES=2000000
GATEWAY_UDP_RATE=5M
GATEWAY_HANDSHAKE_S=4
# Against a wireguard-go server one retry is allowed: lib.sh's FGT_ONE_RETRY_S rounded up to whole seconds.
# Its UDP socket keeps the kernel's default receive buffer (208 KiB in Debian's 0.0.20220316, the peer of
# docs/ROOTLESS.md's overflow measurement), and the data of the clients whose handshakes completed first can
# fill it while a later client's initiation arrives: CI on 2026-12-07 saw client 6 of 8 complete at exactly
# t0 + 5 s, the retry, with wireguard-go serving and every other client at t0 (it had passed in earlier runs).
GATEWAY_HANDSHAKE_RETRY_S=$((${FGT_ONE_RETRY_S%.*} + 1))

# gateway_ns I: the namespace of client I.
gateway_ns() { printf '%s-c%s' "${NS0%-0}" "$1"; }
# gateway_if I: the tunnel interface of client I.
gateway_if() { ifname "c$1"; }

# gateway_port NS BRIDGE_PORT: a veth from NS to ns0's bridge.
gateway_port() {
	local ns=$1 port=$2
	must ip0 link add "$port" type veth peer name fgtup
	must ip0 link set fgtup netns "$ns"
	must ip0 link set "$port" master fgtbr up
	must ip -n "$ns" link set fgtup up
}

# gateway_up: the bridge, the server and the clients, all configured; no traffic yet.
gateway_up() {
	local i ns dev key pub
	make_namespaces
	must ip0 link add fgtbr type bridge
	must ip0 link set fgtbr up
	gateway_port "$NS1" fgtps
	must ip1 addr add 192.0.2.1/24 dev fgtup
	must start_daemon 1 "$IF1" "$NS1"
	must wgc set "$IF1" private-key <(echo "$key1") listen-port 51820
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		ns=$(gateway_ns "$i") dev=$(gateway_if "$i")
		must make_namespace "$ns"
		gateway_port "$ns" "fgtp$i"
		must ip -n "$ns" addr add "192.0.2.$((10 + i))/24" dev fgtup
		must start_daemon 2 "$dev" "$ns"
		key=$(wg genkey) pub=$(wg pubkey <<<"$key")
		must wgc set "$dev" private-key <(echo "$key") \
			peer "$pub1" allowed-ips 10.79.0.0/24,fd79::/64 endpoint 192.0.2.1:51820
		must wgc set "$IF1" peer "$pub" allowed-ips "10.79.0.$((10 + i))/32,fd79::$((10 + i))/128"
		must ip -n "$ns" addr add "10.79.0.$((10 + i))/24" dev "$dev"
		must ip -n "$ns" addr add "fd79::$((10 + i))/64" dev "$dev" nodad
		must ip -n "$ns" link set "$dev" up
	done
	must ip1 addr add 10.79.0.1/24 dev "$IF1"
	must ip1 addr add fd79::1/64 dev "$IF1" nodad
	must ip1 link set "$IF1" up
}

# gateway_iperf_all NAME PREFIX ARGS...: iperf3 from every client at once to its own server port; writes
# PREFIX-I.json.
gateway_iperf_all() {
	local prefix=$1 i spids=() cpids=()
	shift
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		in_ns "$NS1" iperf3 -s -1 -B 10.79.0.1 -p $((5300 + i)) >>"$FGT_LOGDIR/iperf-server.log" 2>&1 &
		spids+=($!)
		FGT_PIDS+=($!)
	done
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		wait_listening "$NS1" t $((5300 + i)) || fgt_log "iperf3 server $((5300 + i)) not listening"
	done
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		in_ns "$(gateway_ns "$i")" timeout --foreground $((GATEWAY_SECONDS + 25)) iperf3 -Z -J -c 10.79.0.1 \
			-p $((5300 + i)) -t "$GATEWAY_SECONDS" "$@" >"$prefix-$i.json" 2>>"$FGT_LOGDIR/iperf-client.log" &
		cpids+=($!)
	done
	wait "${cpids[@]}"
	for i in "${spids[@]}"; do wait_pid_exit "$i" 5 || kill_pids "$i"; wait "$i" 2>/dev/null; done
}

# gateway_handshakes_since T0 BOUND: true if every client's latest handshake is at most BOUND seconds after T0.
gateway_handshakes_since() {
	local t0=$1 bound=$2 i ts late=0
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		read -r _ ts < <(wg show "$(gateway_if "$i")" latest-handshakes)
		fgt_log "client $i: latest handshake ${ts:-none} (load started at $t0)"
		((${ts:-0} >= t0 && ${ts:-0} <= t0 + bound)) || late=1
	done
	((late == 0))
}

# gateway_served PREFIX NAME: one check per client that its iperf3 run (PREFIX-I.json) moved data; NAME is a printf
# format with %s for the client's number.
gateway_served() {
	local i figure name
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		# shellcheck disable=SC2059 # the format is the caller's
		name=$(printf "$2" "$i")
		if figure=$(python3 "$FGT_NET_PY" iperf-summary "$1-$i.json"); then
			pass "$name ($figure)"
		else
			fail "$name" "$figure"
		fi
	done
}

# gateway_rates PREFIX: "aggregate jain min" of the clients' iperf3 results (Mbit/s; UDP: received).
gateway_rates() {
	local i
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		python3 "$FGT_NET_PY" iperf-summary "$1-$i.json" | awk '{print $1 + 0}'
	done | awk '{ n++; sum += $1; sq += $1 * $1; if (n == 1 || $1 < min) min = $1 }
		END { printf "%.1f %.3f %.1f\n", sum, (sq > 0 ? sum * sum / (n * sq) : 0), min }'
}

# gateway_transfers: GATEWAY_BYTES from every client to the server (IPv4 inside) and from the server to every
# client (IPv6 inside), all at once; one check per client and direction.
gateway_transfers() {
	local i ns dir src dst addr port ready out go
	local -a rpids=() spids=() outs=() sents=() names=()
	go=$(mktemp -u "$FGT_LOGDIR/gw-go-XXXXXX")
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		ns=$(gateway_ns "$i")
		for dir in up down; do
			if [[ $dir == up ]]; then src=$ns dst=$NS1 addr=10.79.0.1 port=$((5400 + i))
			else src=$NS1 dst=$ns addr=fd79::$((10 + i)) port=5400; fi
			ready=$(mktemp -u "$FGT_LOGDIR/gw-ready-XXXXXX")
			out=$(mktemp "$FGT_LOGDIR/gw-recv-XXXXXX")
			in_ns "$dst" timeout --foreground 40 python3 "$FGT_NET_PY" tcp-recv "$addr" "$port" "$ready" 30 >"$out" &
			rpids+=($!)
			FGT_PIDS+=($!)
			must wait_ready_file "$ready" "$!" "TCP receiver"
			outs+=("$out")
			sents+=("$(mktemp "$FGT_LOGDIR/gw-sent-XXXXXX")")
			names+=("gateway: client $i: $GATEWAY_BYTES bytes $([[ $dir == up ]] && echo "to the server (IPv4 inside)" ||
				echo "from the server (IPv6 inside)") intact, all clients at once")
			in_ns "$src" timeout --foreground 35 python3 "$FGT_NET_PY" tcp-send "$addr" "$port" "$GATEWAY_BYTES" \
				"$(mktemp -u "$FGT_LOGDIR/gw-conn-XXXXXX")" "$go" >"${sents[-1]}" 2>>"$FGT_LOGDIR/tcp-send.log" &
			spids+=($!)
			FGT_PIDS+=($!)
		done
	done
	touch "$go"
	wait "${spids[@]}" "${rpids[@]}" 2>/dev/null
	for i in "${!names[@]}"; do
		local sent got
		sent=$(<"${sents[$i]}") got=$(<"${outs[$i]}")
		if [[ -n $sent && ${sent% *} == "$got" ]]; then
			pass "${names[$i]}"
		else
			fail "${names[$i]}" "sent '${sent:-nothing}', received '${got:-nothing}'"
		fi
	done
}

scenario_gateway() {
	local t0 i aggregate jain min sessions figure bound
	gateway_up
	t0=$(date +%s)
	gateway_iperf_all "$FGT_LOGDIR/gw-tcp"
	bound=$GATEWAY_HANDSHAKE_S
	[[ $(impl_kind 1) == wireguard-go ]] && bound=$GATEWAY_HANDSHAKE_RETRY_S
	check "gateway: every client's handshake completed within $bound s, all clients starting at once" \
		gateway_handshakes_since "$t0" "$bound"
	gateway_served "$FGT_LOGDIR/gw-tcp" "gateway: client %s served during the TCP load of all $GATEWAY_CLIENTS clients"
	read -r aggregate jain min < <(gateway_rates "$FGT_LOGDIR/gw-tcp")
	note "gateway TCP, $GATEWAY_CLIENTS clients at once: aggregate $aggregate Mbit/s, Jain's index $jain, slowest $min Mbit/s"
	gateway_transfers
	gateway_iperf_all "$FGT_LOGDIR/gw-udp" -u -b "$GATEWAY_UDP_RATE" -l 1200
	for ((i = 1; i <= GATEWAY_CLIENTS; i++)); do
		figure=$(python3 "$FGT_NET_PY" iperf-summary "$FGT_LOGDIR/gw-udp-$i.json")
		if [[ $figure =~ ([0-9.]+)%\ lost ]] && awk -v l="${BASH_REMATCH[1]}" 'BEGIN { exit !(l <= 10) }'; then
			pass "gateway: client $i: UDP at $GATEWAY_UDP_RATE, all clients at once, >= 90 % through ($figure)"
		else
			fail "gateway: client $i: UDP at $GATEWAY_UDP_RATE, all clients at once, >= 90 % through" "$figure"
		fi
	done
	read -r aggregate jain min < <(gateway_rates "$FGT_LOGDIR/gw-udp")
	note "gateway UDP at $GATEWAY_UDP_RATE each: aggregate $aggregate Mbit/s, Jain's index $jain"
	sessions=$(wg show "$IF1" latest-handshakes | awk '$2 > 0' | wc -l)
	check "gateway: the server holds a session with all $GATEWAY_CLIENTS clients" test "$sessions" -eq "$GATEWAY_CLIENTS"
}
