#!/usr/bin/env bash
# Compares userspace WireGuard implementations side by side between two network
# namespaces, with public tools only (iproute2, wireguard-tools, iperf3, ping).
#
#   scripts/bench.sh [-t SECONDS] [--pin] [--outer 4|6] [--inner 4|6] [--peers N]
#                    [--peers-for PATTERN=M]... [--setconf-timeout S] IMPL [IMPL...]
#   scripts/bench.sh --mtu M1,M2,... [-t SECONDS] [--outer 4|6] [--inner 4|6] IMPL [IMPL...]
#   scripts/bench.sh --gateway N [-t SECONDS] [--client-rate RATE] IMPL [IMPL...]
#   scripts/bench.sh --scaling N [--max-threads M] [--rounds R] [-t SECONDS] FERROGUARD
#   scripts/bench.sh --rtt [--pin] [--rounds R] [--count C] IMPL [IMPL...]
#   scripts/bench.sh --rtt-profile [--pin] [--count C] IMPL [IMPL...]
#   scripts/bench.sh --rtt-trace [--pin] [--count C] IMPL [IMPL...]
#
# IMPL is a command that follows wireguard-go's convention (`IMPL -f IFACE`
# creates the TUN IFACE and /var/run/wireguard/IFACE.sock), e.g.
#   scripts/bench.sh target/release/ferroguard wireguard-go \
#       "boringtun-cli --disable-drop-privileges"
# Leading VAR=VALUE words of an IMPL are passed to the daemon's environment,
# e.g. "FERROGUARD_NO_OFFLOAD=1 target/release/ferroguard".
# Each implementation runs in both namespaces in turn; for each it prints
# TCP with one stream A->B and B->A and with four streams A->B, UDP offered at
# 1 Gbit/s (received rate and loss) and unlimited (received), the ping RTT
# (average and median of 100 pings at 10 ms, after the UDP tests), the CPU
# seconds both daemons spent per GB of the one-stream A->B run, and each
# daemon's resident memory idle (tunnel up, before any traffic) and at its
# peak (VmHWM, after all tests); then the ratios to the first implementation.
#
# --outer 4|6: the underlay (endpoints) over IPv4 (default) or IPv6.
# --inner 4|6: the traffic inside the tunnel over IPv4 (default) or IPv6.
# --mtu M1,M2,...: instead, the MTU sweep: for each tunnel MTU (the veth
#   underlay gets MTU + 80, at least 1500), one TCP stream A->B and B->A and
#   UDP unlimited (datagrams filling the MTU), every implementation in turn
#   per MTU, with the ratios to the first at each MTU.
# --gateway N: instead, a gateway: one server (namespace G) and N clients,
#   each its own namespace and daemon, on one bridge; all clients send at
#   once to the server, first TCP (one stream each, -t SECONDS), then UDP at
#   --client-rate (default 200M) each; prints the aggregate goodput, Jain's
#   fairness index over the clients, the slowest client, and whether every
#   client still has a session; then the ratios to the first implementation.
#   Under the UDP round, a line says where the lost datagrams were lost: the
#   clients' TUN queues (their daemon did not read in time) and queueing
#   disciplines, their refused sends, the input backlogs, the server's outer
#   socket and TUN, the iperf3 servers' sockets, or elsewhere; and the share
#   of the bytes the clients' daemons sent that the server's never counted.
#   The server and all clients run the same IMPL.
#   --gateway-cpu: also `perf stat` the server daemon during the TCP round and
#   print its CPU time and context switches per GB carried, in all and per
#   thread, and the switches split into voluntary and involuntary (from
#   /proc); CPU per GB depends less on the machine's load than the goodput,
#   involuntary switches are the load itself. Needs perf.
#
# --scaling N: instead, how the gateway scales with threads: the gateway of
#   --gateway with N clients, the server run as FERROGUARD (a ferroguard
#   command) once with its defaults and then with k = 1 .. M (default: the
#   cores) lanes and crypto threads (FERROGUARD_IO_THREADS=queues:k, or `one`
#   for k = 1, FERROGUARD_CRYPTO_THREADS=k) pinned with taskset to CPUs
#   0 .. k-1; the clients keep their defaults, unpinned. Per row: the TCP
#   aggregate of all clients at once (one stream each, Jain's index), and one
#   TCP stream of client 1 alone (single flow). The rows are taken in turn,
#   R rounds (default 1) interleaved; one table per round, then the ratios of
#   each row's median to the default row's.
# --peers N: after measuring with the one real peer, add N-1 extra peers to
#   both daemons with one `wg addconf` each (random public keys, one /32 each
#   in 10.128.0.0/9, every 2nd also a /128 in fd00:5ca1::/64, every 4th an
#   endpoint in 198.51.100.0/24; none overlaps the tunnel's 10.78.0.0/24),
#   measure again, and print the ratios N peers / 1 peer of the same daemons,
#   the `wg addconf` wall time and the RSS growth per extra peer.
#   (Up to 2^20 peers, with memory and ping during the load: scripts/bench-peers.sh.)
# --peers-for PATTERN=M: implementations whose command contains PATTERN get M
#   peers instead of N. wireguard-go refuses more than 65 536 peers
#   (MaxPeers = 1 << 16; `wg addconf` then hangs), so a command containing
#   "wireguard-go" gets at most 65 536 unless a --peers-for rule says
#   otherwise. --setconf-timeout S (default 120) bounds each `wg addconf`; on
#   timeout the measurement goes on with the peers configured so far, and the
#   output says how many that was (marked "timeout").
# --rtt: only round-trip time, C pings (default 200) at 10 ms per round,
#   implementations interleaved (A B A B ...) for R rounds (default 3) to
#   cancel drift; prints avg/min/p50/p99 per round and the median per IMPL.
# --rtt-profile: per IMPL, counts what C pings cost both daemons together,
#   per round trip: system calls by name (strace -f -c), context switches
#   and wake-ups (perf stat); needs strace and perf (mounts tracefs for the
#   run if it is not mounted).
# --rtt-trace: per IMPL, records C pings with ftrace (scheduler wake-ups and
#   switches, system calls of the daemons and ping) and sorts the round trips
#   by how many of their wake-ups crossed to another CPU ("remote": on a VM a
#   halted vCPU is woken by an inter-processor interrupt, tens of µs), with
#   the median traced time of each group. Tracing slows every hop, so compare
#   the groups and the implementations, not the times with untraced pings.
# --stages: instead, where the CPU goes: per IMPL, one TCP stream A->B for
#   -t SECONDS while `perf record` samples each daemon; the samples are sorted
#   into the data path's stages by scripts/stage-model.py and printed as CPU
#   ns per data packet per stage (A sends, B receives), with what is serial
#   per device or per I/O thread today, and the goodput those costs allow on
#   1 to 64 cores today and with issue #18's design. Needs perf.
# --pin: namespace A's daemon and clients on CPU 0, B's on CPU 1.
# Needs root. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=5 PEERS=1 SETCONF_TIMEOUT=120 RTT_ONLY=0 ROUNDS=3 COUNT=200 PIN=0
OUTER=4 INNER=4 MTUS="" GATEWAY=0 CLIENT_RATE=200M STAGES=0 SCALING=0 MAX_THREADS=$(nproc)
GW_SERVER_ENV=() GW_SERVER_CPUS=""
ROUNDS_SET=0
PEERS_FOR=()
while [ $# -gt 0 ]; do
  case $1 in
    -t) SECONDS_EACH=$2; shift 2 ;;
    --peers) PEERS=$2; shift 2 ;;
    --peers-for) PEERS_FOR+=("$2"); shift 2 ;;
    --setconf-timeout) SETCONF_TIMEOUT=$2; shift 2 ;;
    --rtt) RTT_ONLY=1; shift ;;
    --rtt-profile) RTT_ONLY=2; shift ;;
    --rtt-trace) RTT_ONLY=3; shift ;;
    --rounds) ROUNDS=$2; ROUNDS_SET=1; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --outer) OUTER=$2; shift 2 ;;
    --inner) INNER=$2; shift 2 ;;
    --mtu) MTUS=${2//,/ }; shift 2 ;;
    --gateway) GATEWAY=$2; shift 2 ;;
    --client-rate) CLIENT_RATE=$2; shift 2 ;;
    --gateway-cpu) GATEWAY_CPU=1; shift ;;
    --stages) STAGES=1; shift ;;
    --scaling) SCALING=$2; GATEWAY=$2; shift 2 ;;
    --max-threads) MAX_THREADS=$2; shift 2 ;;
    -*) echo "bench: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
for tool in ip wg iperf3 ping python3 timeout; do
  command -v $tool >/dev/null || { echo "bench: $tool is needed" >&2; exit 1; }
done

A=fgbench-a B=fgbench-b TMP=$(mktemp -d) MOUNTED_TRACEFS=0
cleanup() {
  set +e
  for ns in $(ip netns list | awk '/^fgbench-/ {print $1}'); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
  done
  sleep 0.3
  for ns in $(ip netns list | awk '/^fgbench-/ {print $1}'); do ip netns del "$ns"; done
  rm -f /var/run/wireguard/fgbench[ab][0-9]*.sock /var/run/wireguard/fgbenchg[0-9]*.sock
  rm -rf "$TMP"
  [ "$MOUNTED_TRACEFS" = 0 ] || umount /sys/kernel/tracing
}
trap cleanup EXIT INT TERM
umask 077
for side in a b; do wg genkey >"$TMP/$side.key"; wg pubkey <"$TMP/$side.key" >"$TMP/$side.pub"; done

# The process that does the work: the daemon itself, or its first child if
# it forked (`ip netns exec` and `env` exec in place).
daemon_pid() { local child; child=$(pgrep -P "$1" | head -1); echo "${child:-$1}"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# on_cpu SIDE CMD...: runs CMD pinned to side A's or B's CPU with --pin.
on_cpu() {
  local cpu=$(($1 == 1 ? 0 : 1)); shift
  if [ "$PIN" = 1 ]; then taskset -c $cpu "$@"; else "$@"; fi
}

# peers_for IMPL: the number of peers to configure for IMPL.
peers_for() {
  local n=$PEERS rule
  case $1 in *wireguard-go*) [ "$n" -le 65536 ] || n=65536 ;; esac
  for rule in ${PEERS_FOR[@]+"${PEERS_FOR[@]}"}; do
    case $1 in *"${rule%%=*}"*) n=${rule#*=} ;; esac
  done
  echo "$n"
}

# extra_peers COUNT: a wg config with COUNT random peers (see the header).
extra_peers() { python3 scripts/random-peers.py "$1"; }

# The tunnel address of side B that traffic goes to, by --inner.
if [ "$INNER" = 6 ]; then TB=fd78::2; else TB=10.78.0.2; fi
# endpoint SIDE: side 1's (A's) or 2's (B's) UDP endpoint on the veth, by --outer.
endpoint() { if [ "$OUTER" = 6 ]; then echo "[2001:db8::$1]:51820"; else echo "192.0.2.$1:51820"; fi; }

# start_pair IMPL INDEX: both daemons up, one peer each, tunnel checked.
# Sets IA IB (interfaces), NA NB (namespaces), PA PB (daemon pids).
start_pair() {
  local impl=$1 env_words=() words
  IA=fgbencha$2 IB=fgbenchb$2 NA=$A$2 NB=$B$2
  read -r -a words <<<"$impl"
  while [[ ${words[0]} == *=* ]]; do env_words+=("${words[0]}"); words=("${words[@]:1}"); done
  ip netns del $NA 2>/dev/null || true; ip netns del $NB 2>/dev/null || true
  ip netns add $NA; ip netns add $NB
  ip link add fgbench0 netns $NA type veth peer name fgbench1 netns $NB
  ip -n $NA addr add 192.0.2.1/24 dev fgbench0; ip -n $NA addr add 2001:db8::1/64 dev fgbench0 nodad
  ip -n $NB addr add 192.0.2.2/24 dev fgbench1; ip -n $NB addr add 2001:db8::2/64 dev fgbench1 nodad
  ip -n $NA link set fgbench0 up; ip -n $NA link set lo up
  ip -n $NB link set fgbench1 up; ip -n $NB link set lo up
  on_cpu 1 ip netns exec $NA env WG_PROCESS_FOREGROUND=1 ${env_words[@]+"${env_words[@]}"} \
    "${words[@]}" -f $IA >"$TMP/a.log" 2>&1 & PA=$!
  on_cpu 2 ip netns exec $NB env WG_PROCESS_FOREGROUND=1 ${env_words[@]+"${env_words[@]}"} \
    "${words[@]}" -f $IB >"$TMP/b.log" 2>&1 & PB=$!
  local up=0
  for _ in $(seq 50); do
    if wg show $IA >/dev/null 2>&1 && wg show $IB >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
  done
  [ $up = 1 ] || { echo "bench: $impl did not start" >&2; cat "$TMP/a.log" "$TMP/b.log" >&2; return 1; }
  PA=$(daemon_pid $PA) PB=$(daemon_pid $PB)
  ip netns exec $NA wg set $IA private-key "$TMP/a.key" listen-port 51820 \
    peer "$(cat "$TMP/b.pub")" allowed-ips 10.78.0.2/32,fd78::2/128 endpoint "$(endpoint 2)"
  ip netns exec $NB wg set $IB private-key "$TMP/b.key" listen-port 51820 \
    peer "$(cat "$TMP/a.pub")" allowed-ips 10.78.0.1/32,fd78::1/128 endpoint "$(endpoint 1)"
  for side in $NA:$IA:1 $NB:$IB:2; do
    IFS=: read -r ns dev n <<<"$side"
    ip -n "$ns" link set "$dev" mtu 1420; ip -n "$ns" addr add "10.78.0.$n/24" dev "$dev"
    ip -n "$ns" addr add "fd78::$n/64" dev "$dev" nodad; ip -n "$ns" link set "$dev" up
  done
  ip netns exec $NA ping -c 3 -i 0.2 -W 2 "$TB" >/dev/null
  IDLE_A=$(rss_kb $PA) IDLE_B=$(rss_kb $PB)
  on_cpu 2 ip netns exec $NB iperf3 -s -D -p 5201 >/dev/null 2>&1; sleep 0.3
  # A first TCP run is slower (buffers and caches growing): warm up untimed.
  [ "$RTT_ONLY" != 0 ] || on_cpu 1 ip netns exec $NA iperf3 -c "$TB" -p 5201 -t 1 >/dev/null 2>&1 || true
}

stop_pair() {
  local pid
  for pid in "$PA" "$PB"; do
    kill -0 "$pid" 2>/dev/null || { echo "bench: a daemon of this pair (pid $pid) exited early:" >&2; cat "$TMP/a.log" "$TMP/b.log" >&2; }
  done
  kill "$PA" "$PB" 2>/dev/null || true
  ip netns pids $NA 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns pids $NB 2>/dev/null | xargs -r kill 2>/dev/null || true
  # The next implementation uses the same socket names: wait until these are gone.
  for _ in $(seq 50); do
    [ -e /var/run/wireguard/$IA.sock ] || [ -e /var/run/wireguard/$IB.sock ] || break
    sleep 0.1
  done
  rm -f /var/run/wireguard/$IA.sock /var/run/wireguard/$IB.sock
  ip netns del $NA 2>/dev/null || true; ip netns del $NB 2>/dev/null || true
}

# ping_stats COUNT: "avg min p50 p99" in ms of COUNT pings at 10 ms, A -> B.
ping_stats() {
  on_cpu 1 ip netns exec $NA ping -c "$1" -i 0.01 -W 1 "$TB" |
    python3 -c '
import re, sys
t = sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read()))
if not t: print("- - - -"); sys.exit()
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]
print("%.3f %.3f %.3f %.3f" % (sum(t) / len(t), t[0], pick(0.5), pick(0.99)))'
}

# iperf_mbit ARGS...: one iperf3 run A -> B (-R: B -> A) with ARGS; prints the
# received Mbit/s ("-" if it failed), and for UDP also the loss in percent.
iperf_mbit() {
  on_cpu 1 ip netns exec $NA iperf3 -c "$TB" -p 5201 -t "$SECONDS_EACH" -J "$@" 2>/dev/null | iperf_rate
}
# iperf_rate: the received Mbit/s of the iperf3 -J output on stdin (UDP: and the loss in percent).
iperf_rate() {
  python3 -c 'import json,sys
try:
  run = json.load(sys.stdin); end = run["end"]
  if run["start"]["test_start"]["protocol"] == "UDP":
    s = end["sum"]; print(round(s["bits_per_second"]*(1-s["lost_percent"]/100)/1e6), round(s["lost_percent"],2))
  else: print(round(end["sum_received"]["bits_per_second"]/1e6))
except Exception: print("- -")'
}

# udp_len: the UDP payload that fills the tunnel's MTU (by --inner).
udp_len() {
  local mtu; mtu=$(cat "/sys/class/net/$IA/mtu" 2>/dev/null || ip netns exec $NA cat "/sys/class/net/$IA/mtu")
  echo $((mtu - (INNER == 6 ? 48 : 28)))
}

hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# measure: prints "tcp1 tcp1r tcp4 udp1g loss1g udpmax rtt_avg rtt_p50 cpu_s_per_gb idle_a idle_b peak_a peak_b"
# (Mbit/s, %, ms, CPU seconds of both daemons per GB of the one-stream A -> B run, RSS in kB) for the
# running pair.
measure() {
  local ta tb tcp1 tcp1r tcp4 cpu hz udp1g udpmax rtt len
  len=$(udp_len)
  ta=$(cpu_ticks $PA); tb=$(cpu_ticks $PB)
  tcp1=$(iperf_mbit | awk '{print $1}')
  hz=$(getconf CLK_TCK)
  cpu=$(python3 -c "import sys; t, mbit, s = float(sys.argv[1]), sys.argv[2], float(sys.argv[3])
print(round(t / ($hz * float(mbit) * s / 8000), 2) if mbit != '-' and float(mbit) > 0 else '-')" \
    $(( $(cpu_ticks $PA) - ta + $(cpu_ticks $PB) - tb )) "$tcp1" "$SECONDS_EACH")
  tcp1r=$(iperf_mbit -R | awk '{print $1}')
  tcp4=$(iperf_mbit -P 4 | awk '{print $1}')
  udp1g=$(iperf_mbit -u -b 1G -l "$len" -w 2M)
  udpmax=$(iperf_mbit -u -b 0 -l "$len" -w 2M | awk '{print $1}')
  sleep 1 # let the flood's backlog drain before timing pings
  rtt=$(ping_stats 100 | awk '{print $1, $3}')
  echo "$tcp1 $tcp1r $tcp4 $udp1g $udpmax $rtt $cpu $IDLE_A $IDLE_B $(hwm_kb $PA) $(hwm_kb $PB)"
}

# add_peers IMPL: adds the extra peers to both daemons; prints
# "peers secs_a secs_b rss_per_peer_a_bytes rss_per_peer_b_bytes status".
add_peers() {
  local n m secs_a secs_b rss_a0 rss_b0 status=ok got
  n=$(peers_for "$1"); m=$((n - 1))
  extra_peers $m >"$TMP/peers-a.conf"; extra_peers $m >"$TMP/peers-b.conf"
  rss_a0=$(rss_kb $PA); rss_b0=$(rss_kb $PB)
  timed_addconf() { # NS IFACE FILE: wall seconds, or "timeout"
    local t0 t1
    t0=$(date +%s.%N)
    if ! timeout "$SETCONF_TIMEOUT" ip netns exec "$1" wg addconf "$2" "$3" >/dev/null 2>"$TMP/addconf.err"; then
      echo timeout; return
    fi
    t1=$(date +%s.%N); python3 -c "print(round($t1 - $t0, 3))"
  }
  secs_a=$(timed_addconf $NA $IA "$TMP/peers-a.conf")
  secs_b=$(timed_addconf $NB $IB "$TMP/peers-b.conf")
  if [ "$secs_a" = timeout ] || [ "$secs_b" = timeout ]; then
    status=timeout
    sleep 5 # let a daemon that is still applying settle
  fi
  got=$(ip netns exec $NA wg show $IA peers 2>/dev/null | wc -l || echo "?")
  sleep 1 # let lazily grown tables and threads settle before reading RSS
  echo "$got $secs_a $secs_b $(( ($(rss_kb $PA) - rss_a0) * 1024 / (m > 0 ? m : 1) ))" \
    "$(( ($(rss_kb $PB) - rss_b0) * 1024 / (m > 0 ? m : 1) ))" "$status"
}

ratio() { python3 -c "import sys; a, b = sys.argv[1:]; print(round(float(a) / float(b), 3) if b not in ('0', '-') and a != '-' else '-')" "$1" "$2"; }

# profile_rtt: counts per round trip of COUNT pings, both daemons together.
profile_rtt() {
  local perf_pid strace_pid
  perf stat -x, --per-thread -e context-switches,raw_syscalls:sys_enter,sched:sched_wakeup \
    -p "$PA,$PB" -o "$TMP/perf" & perf_pid=$!
  sleep 0.5
  cat /proc/interrupts >"$TMP/irq0"
  ping_stats "$COUNT" >/dev/null
  cat /proc/interrupts >"$TMP/irq1"
  kill -INT $perf_pid; wait $perf_pid 2>/dev/null || true
  echo "  interrupts per round trip (all CPUs, whole machine):"
  awk -v n="$COUNT" 'FNR == NR && $1 ~ /^(RES|CAL|LOC):$/ { before[$1] = $2 + $3; next }
    $1 in before { printf "    %-28s %6.2f\n", $1, ($2 + $3 - before[$1]) / n }' \
    "$TMP/irq0" "$TMP/irq1"
  echo "  perf stat per round trip (thread: context switches, syscalls, wake-ups it caused):"
  python3 - "$TMP/perf" "$COUNT" <<'PY'
import collections, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) < 4 or not f[1].replace(".", "").isdigit():
        continue
    rows[f[0]][f[3]] = float(f[1])
n = float(sys.argv[2])
total = collections.Counter()
for thread, c in sorted(rows.items()):
    cs, sc, wk = (c.get(e, 0) for e in ("context-switches", "raw_syscalls:sys_enter", "sched:sched_wakeup"))
    total.update({"cs": cs, "sc": sc, "wk": wk})
    if cs or sc:
        print("    %-28s %6.2f %6.2f %6.2f" % (thread, cs / n, sc / n, wk / n))
print("    %-28s %6.2f %6.2f %6.2f" % ("total", total["cs"] / n, total["sc"] / n, total["wk"] / n))
PY
  strace -q -f -c -o "$TMP/strace" -p "$PA" -p "$PB" & strace_pid=$!
  sleep 1
  ping_stats "$COUNT" >/dev/null
  kill -INT $strace_pid; wait $strace_pid 2>/dev/null || true
  echo "  strace -f -c, calls per round trip:"
  awk -v n="$COUNT" '$NF != "syscall" && $NF != "total" && $4 ~ /^[0-9]+$/ {
      printf "    %-20s %6.2f\n", $NF, $4 / n; sum += $4 }
    END { printf "    %-20s %6.2f\n", "total", sum / n }' "$TMP/strace"
}

# trace_rtt: ftrace of COUNT pings; prints round trips grouped by remote wake-ups.
trace_rtt() {
  local t=/sys/kernel/tracing e events="sched/sched_switch sched/sched_wakeup raw_syscalls/sys_enter raw_syscalls/sys_exit"
  echo 0 >$t/tracing_on; echo >$t/trace; echo 8192 >$t/buffer_size_kb
  for e in $events; do echo 1 >"$t/events/$e/enable"; done
  # Only the system calls of ping and the daemons' threads (any other process id is left out).
  echo "common_pid == $(ps -L -o lwp= -p "$PA,$PB" | xargs | sed 's/ / || common_pid == /g') || comm == \"ping\"" \
    >$t/events/raw_syscalls/filter
  echo 1 >$t/tracing_on
  ping_stats "$COUNT" >/dev/null
  echo 0 >$t/tracing_on
  for e in $events; do echo 0 >"$t/events/$e/enable"; done
  echo 0 >$t/events/raw_syscalls/filter
  cp $t/trace "$TMP/trace"; echo >$t/trace
  python3 - "$TMP/trace" "$(ps -L -o lwp= -p "$PA,$PB" | xargs)" <<'PY'
import collections, re, statistics, sys
tids = set(sys.argv[2].split())
event = re.compile(r"^\s*(\S+)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$")
groups, trip = collections.defaultdict(list), None
for line in open(sys.argv[1]):
    m = event.match(line)
    if not m:
        continue
    comm, cpu, t, name, rest = m.group(1), int(m.group(3)), float(m.group(4)), m.group(5), m.group(6)
    if comm == "ping" and name == "sys_enter" and rest.startswith("NR 44 "):  # sendto
        trip = {"start": t, "remote": 0}
    elif trip is not None and name == "sched_wakeup":
        woken = re.search(r"comm=(.*) pid=(\d+) .*target_cpu=(\d+)", rest)
        if woken and (woken.group(2) in tids or woken.group(1) == "ping") and int(woken.group(3)) != cpu:
            trip["remote"] += 1
    elif trip is not None and comm == "ping" and name == "sys_exit" and rest.startswith("NR 47 = 84"):
        groups[trip["remote"]].append((t - trip["start"]) * 1e6)  # recvmsg of the reply
        trip = None
total = sum(len(v) for v in groups.values())
for remote in sorted(groups):
    v = groups[remote]
    print("    %d remote wake-ups: %3d of %d round trips, median %4.0f us traced"
          % (remote, len(v), total, statistics.median(v)))
PY
}

if [ "$RTT_ONLY" = 3 ]; then
  if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing && MOUNTED_TRACEFS=1
  fi
  index=0
  for impl in "$@"; do
    start_pair "$impl" "$index"
    sleep 0.5
    echo "$impl ($COUNT pings at 10 ms, A -> B, traced):"
    trace_rtt
    stop_pair
    index=$((index + 1))
  done
  exit 0
fi

if [ "$RTT_ONLY" = 2 ]; then
  for tool in perf strace; do
    command -v $tool >/dev/null || { echo "bench: $tool is needed" >&2; exit 1; }
  done
  if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing && MOUNTED_TRACEFS=1
  fi
  index=0
  for impl in "$@"; do
    start_pair "$impl" "$index"
    echo "$impl ($COUNT pings at 10 ms, A -> B):"
    profile_rtt
    stop_pair
    index=$((index + 1))
  done
  exit 0
fi

if [ "$RTT_ONLY" = 1 ]; then
  printf '%-52s %5s %8s %8s %8s %8s\n' implementation round "avg ms" "min ms" "p50 ms" "p99 ms"
  for round in $(seq "$ROUNDS"); do
    index=0
    for impl in "$@"; do
      start_pair "$impl" "$index"
      sleep 0.5
      read -r avg min p50 p99 < <(ping_stats "$COUNT")
      stop_pair
      printf '%-52s %5s %8s %8s %8s %8s\n' "$impl" "$round" "$avg" "$min" "$p50" "$p99"
      echo "$index $avg $min $p50 $p99" >>"$TMP/rtt"
      index=$((index + 1))
    done
  done
  echo "median over $ROUNDS rounds:"
  index=0
  for impl in "$@"; do
    printf '%-58s %s\n' "$impl" "$(awk -v i=$index '$1 == i' "$TMP/rtt" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in sys.stdin if "-" not in l.split()[1:]]
print(" ".join("%8.3f" % statistics.median(c) for c in zip(*rows)) if rows else "-")')"
    index=$((index + 1))
  done
  exit 0
fi

# The main table: one row per implementation (and per peer count), then the ratios to the first.
COLUMNS_FMT='%-34s %7s %6s %6s %6s %6s %5s %6s %6s %6s %6s %9s %9s\n'
header() {
  printf "$COLUMNS_FMT" implementation peers tcp1 tcp1r tcp4 udp1G loss udpmax rtt p50 "cpu/GB" "idle A/B" "peak A/B"
}
row() { # IMPL PEERS MEASURE...
  local impl=$1 peers=$2 tcp1 tcp1r tcp4 udp1g loss udpmax rtt p50 cpu ia ib pa pb
  read -r tcp1 tcp1r tcp4 udp1g loss udpmax rtt p50 cpu ia ib pa pb <<<"${*:3}"
  printf "$COLUMNS_FMT" "${impl:0:34}" "$peers" "$tcp1" "$tcp1r" "$tcp4" "$udp1g" "$loss" "$udpmax" "$rtt" "$p50" \
    "$cpu" "$((ia / 1024))/$((ib / 1024))M" "$((pa / 1024))/$((pb / 1024))M"
}
ratios() { # FIRST_MEASURE THIS_MEASURE: this / first, column by column
  local -a a b
  read -r -a a <<<"$1"; read -r -a b <<<"$2"
  printf "$COLUMNS_FMT" "    ratio to the first" "" "$(ratio "${b[0]}" "${a[0]}")" "$(ratio "${b[1]}" "${a[1]}")" \
    "$(ratio "${b[2]}" "${a[2]}")" "$(ratio "${b[3]}" "${a[3]}")" "" "$(ratio "${b[5]}" "${a[5]}")" \
    "$(ratio "${b[6]}" "${a[6]}")" "$(ratio "${b[7]}" "${a[7]}")" "$(ratio "${b[8]}" "${a[8]}")" \
    "$(ratio "$((b[9] + b[10]))" "$((a[9] + a[10]))")" "$(ratio "$((b[11] + b[12]))" "$((a[11] + a[12]))")"
}

# MTU sweep: per MTU, every implementation in turn.
mtu_measure() { # prints "tcp1 tcp1r udpmax"
  local len; len=$(udp_len)
  echo "$(iperf_mbit | awk '{print $1}') $(iperf_mbit -R | awk '{print $1}')" \
    "$(iperf_mbit -u -b 0 -l "$len" -w 2M | awk '{print $1}')"
}
if [ -n "$MTUS" ]; then
  echo "MTU sweep: underlay IPv$OUTER, traffic IPv$INNER, $SECONDS_EACH s per test (Mbit/s; ratio to the first IMPL)"
  printf '%6s  %-40s %7s %7s %7s   %s\n' mtu implementation tcp1 tcp1r udpmax "ratios tcp1/tcp1r/udpmax"
  for mtu in $MTUS; do
    if [ "$INNER" = 6 ] && [ "$mtu" -lt 1280 ]; then
      echo "  MTU $mtu: not measured (IPv6 needs an MTU of at least 1280)"; continue
    fi
    first=() index=0
    for impl in "$@"; do
      start_pair "$impl" "$index"
      for side in $NA:$IA:fgbench0 $NB:$IB:fgbench1; do
        IFS=: read -r ns dev veth <<<"$side"
        ip -n "$ns" link set "$veth" mtu $((mtu + 80 > 1500 ? mtu + 80 : 1500))
        ip -n "$ns" link set "$dev" mtu "$mtu"
      done
      read -r -a got < <(mtu_measure)
      if [ ${#first[@]} = 0 ]; then first=("${got[@]}"); r="";
      else r="$(ratio "${got[0]}" "${first[0]}") / $(ratio "${got[1]}" "${first[1]}") / $(ratio "${got[2]}" "${first[2]}")"; fi
      printf '%6s  %-40s %7s %7s %7s   %s\n' "$mtu" "${impl:0:40}" "${got[@]}" "$r"
      stop_pair
      index=$((index + 1))
    done
  done
  exit 0
fi

# Gateway: a server and GATEWAY clients on one bridge (namespace fgbench-g holds the bridge and the server).
gateway_up() { # IMPL: sets GW_PIDS (server first); the tunnel is 10.79.0.1 (server), 10.79.0.(10+i) (clients)
  local impl=$1 env_words=() words i ns
  read -r -a words <<<"$impl"
  while [[ ${words[0]} == *=* ]]; do env_words+=("${words[0]}"); words=("${words[@]:1}"); done
  GW_PIDS=()
  ip netns add fgbench-g; ip -n fgbench-g link set lo up
  ip -n fgbench-g link add fgbr0 type bridge; ip -n fgbench-g addr add 192.0.2.1/24 dev fgbr0
  ip -n fgbench-g link set fgbr0 up
  wg genkey >"$TMP/g.key"; wg pubkey <"$TMP/g.key" >"$TMP/g.pub"
  for i in $(seq 0 "$GATEWAY"); do
    ns=fgbench-g; [ "$i" = 0 ] || ns=fgbench-c$i
    if [ "$i" != 0 ]; then
      ip netns add $ns; ip -n $ns link set lo up
      ip link add fgbc$i netns fgbench-g type veth peer name fgbench0 netns $ns
      ip -n fgbench-g link set fgbc$i master fgbr0 up
      ip -n $ns addr add 192.0.2.$((10 + i))/24 dev fgbench0; ip -n $ns link set fgbench0 up
      wg genkey >"$TMP/c$i.key"; wg pubkey <"$TMP/c$i.key" >"$TMP/c$i.pub"
    fi
    local server_env=() pin=()
    if [ "$i" = 0 ]; then
      server_env=(${GW_SERVER_ENV[@]+"${GW_SERVER_ENV[@]}"})
      [ -z "$GW_SERVER_CPUS" ] || pin=(taskset -c "$GW_SERVER_CPUS")
    fi
    ip netns exec $ns env WG_PROCESS_FOREGROUND=1 ${env_words[@]+"${env_words[@]}"} \
      ${server_env[@]+"${server_env[@]}"} ${pin[@]+"${pin[@]}"} "${words[@]}" -f fgbenchg$i >"$TMP/g$i.log" 2>&1 &
    GW_PIDS+=($!)
  done
  for i in $(seq 0 "$GATEWAY"); do
    for _ in $(seq 50); do wg show fgbenchg$i >/dev/null 2>&1 && break; sleep 0.1; done
    GW_PIDS[$i]=$(daemon_pid "${GW_PIDS[$i]}")
  done
  ip netns exec fgbench-g wg set fgbenchg0 private-key "$TMP/g.key" listen-port 51820
  for i in $(seq 1 "$GATEWAY"); do
    ip netns exec fgbench-g wg set fgbenchg0 peer "$(cat "$TMP/c$i.pub")" allowed-ips 10.79.0.$((10 + i))/32
    ip netns exec fgbench-c$i wg set fgbenchg$i private-key "$TMP/c$i.key" listen-port 51820 \
      peer "$(cat "$TMP/g.pub")" allowed-ips 10.79.0.0/24 endpoint 192.0.2.1:51820
    ip -n fgbench-c$i addr add 10.79.0.$((10 + i))/24 dev fgbenchg$i; ip -n fgbench-c$i link set fgbenchg$i mtu 1420 up
    on_cpu 2 ip netns exec fgbench-g iperf3 -s -D -p $((5200 + i)) >/dev/null 2>&1
  done
  ip -n fgbench-g addr add 10.79.0.1/24 dev fgbenchg0; ip -n fgbench-g link set fgbenchg0 mtu 1420 up
  sleep 0.3
  local pings=()
  for i in $(seq 1 "$GATEWAY"); do ip netns exec fgbench-c$i ping -c 2 -i 0.2 -W 2 10.79.0.1 >/dev/null & pings+=($!); done
  wait "${pings[@]}"
}
gateway_down() {
  kill "${GW_PIDS[@]}" 2>/dev/null || true
  for ns in $(ip netns list | awk '/^fgbench-[gc]/ {print $1}'); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  for _ in $(seq 50); do ls /var/run/wireguard/fgbenchg*.sock >/dev/null 2>&1 || break; sleep 0.1; done
  rm -f /var/run/wireguard/fgbenchg*.sock
  for ns in $(ip netns list | awk '/^fgbench-[gc]/ {print $1}'); do ip netns del "$ns"; done
}
# gw_switches PID: the voluntary and involuntary context switches of all of PID's threads, summed.
gw_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 } END { print v + 0, n + 0 }'
}
# gw_udp_counters: where a gateway's UDP datagrams can be lost, as cumulative counters:
# "clients_tun_tx_dropped server_outer_socket_drops server_iperf3_socket_drops server_tun_rx_dropped
# input_backlog_drops clients_qdisc_drops clients_udp_sndbuf_errors clients_tx_bytes server_rx_bytes".
# A client's TUN drops what its daemon does not read in time; the server's sockets drop
# what their reader does not take in time (the drops column of /proc/net/udp{,6}).
gw_udp_counters() {
  local i tun=0 port_hex
  for i in $(seq 1 "$GATEWAY"); do
    tun=$((tun + $(ip netns exec fgbench-c$i cat /sys/class/net/fgbenchg$i/statistics/tx_dropped)))
  done
  port_hex=$(printf '%04X' 51820)
  ip netns exec fgbench-g cat /proc/net/udp /proc/net/udp6 | awk -v outer=":$port_hex" -v tun="$tun" \
    -v tun_rx="$(ip netns exec fgbench-g cat /sys/class/net/fgbenchg0/statistics/rx_dropped)" '
    $1 ~ /^[0-9]+:$/ { port = substr($2, length($2) - 4); if (port == outer) o += $NF; else i += $NF }
    END { printf "%d %d %d %d", tun, o + 0, i + 0, tun_rx }'
  # The machine's input backlogs (softnet_stat's second column, per CPU, hex): a veth or
  # a TUN write queues there, and drops when it is full.
  local backlog=0 _cpu dropped _rest
  while read -r _cpu dropped _rest; do backlog=$((backlog + 16#$dropped)); done </proc/net/softnet_stat
  printf ' %d' "$backlog"
  # The clients' queueing disciplines (in front of each TUN): full when the daemon reads
  # the TUN slower than iperf3 writes.
  for i in $(seq 1 "$GATEWAY"); do ip netns exec fgbench-c$i tc -s qdisc show; done |
    awk '/dropped/ { sub(/,/, "", $7); n += $7 } END { printf " %d", n }'
  # The clients' UDP sends refused for want of socket buffer (Udp: SndbufErrors).
  for i in $(seq 1 "$GATEWAY"); do ip netns exec fgbench-c$i cat /proc/net/snmp; done |
    awk '/^Udp:/ { if (header) { n += $column; header = 0 }
                   else { for (k = 1; k <= NF; k++) if ($k == "SndbufErrors") column = k; header = 1 } }
      END { printf " %d", n }'
  # The tunnel's bytes as the daemons count them: sent by all clients, received by the server.
  for i in $(seq 1 "$GATEWAY"); do ip netns exec fgbench-c$i wg show fgbenchg$i transfer; done |
    awk '{ n += $3 } END { printf " %.0f", n }'
  ip netns exec fgbench-g wg show fgbenchg0 transfer | awk '{ n += $2 } END { printf " %.0f\n", n }'
}
# gw_udp_accounting BEFORE AFTER: prints where the UDP round's datagrams were lost (the
# counters of gw_udp_counters, differenced; iperf3's sent and lost packets from gw*.json).
gw_udp_accounting() {
  python3 - "$1" "$2" "$TMP" "$GATEWAY" <<'PY'
import json, sys
before, after, tmp, clients = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3], int(sys.argv[4])
d = [int(float(a)) - int(float(b)) for a, b in zip(after, before)]
sent = lost = 0
for i in range(1, clients + 1):
    try:
        s = json.load(open(f"{tmp}/gw{i}.json"))["end"]["sum"]
        sent += s["packets"]; lost += s["lost_packets"]
    except Exception:
        pass
named = sum(d[:7])
# Bytes the clients' daemons sent that the server's daemon never counted: lost in
# the kernel between them (the server's socket counts a dropped batch once).
between = 100 * (1 - d[8] / d[7]) if d[7] > 0 else 0
print(f"    udp losses: {lost} of {sent} datagrams ({100 * lost / max(sent, 1):.1f} %): clients' TUN queues {d[0]},"
      f" their queueing disciplines {d[5]}, clients' sends refused {d[6]}, input backlogs {d[4]}, server's outer socket {d[1]}, server's TUN {d[3]},"
      f" iperf3 sockets {d[2]}, elsewhere {lost - named}; between the daemons {between:.1f} % of the bytes")
PY
}
# gateway_round ARGS...: every client runs iperf3 ARGS to the server at once; prints
# "aggregate_mbit jain min_mbit" (UDP: received rates).
gateway_round() {
  local i clients=()
  for i in $(seq 1 "$GATEWAY"); do
    ip netns exec fgbench-c$i iperf3 -c 10.79.0.1 -p $((5200 + i)) -t "$SECONDS_EACH" -J "$@" >"$TMP/gw$i.json" 2>>"$TMP/gw-stderr.log" &
    clients+=($!)
  done
  wait "${clients[@]}"
  grep -h "\"error\"" "$TMP"/gw*.json | sort | uniq -c | sed "s/^/    iperf3: /" >&2 || true
  for i in $(seq 1 "$GATEWAY"); do iperf_rate <"$TMP/gw$i.json" | awk '{print $1 == "-" ? 0 : $1}'; done |
    awk '{ n++; sum += $1; squares += $1 * $1; if (n == 1 || $1 < min) min = $1 }
      END { printf "%d %.3f %d\n", sum, (squares > 0 ? sum * sum / (n * squares) : 0), min }'
}
# single_flow: one TCP stream of client 1 alone to the server; prints Mbit/s.
single_flow() {
  ip netns exec fgbench-c1 iperf3 -c 10.79.0.1 -p 5201 -t "$SECONDS_EACH" -J 2>>"$TMP/gw-stderr.log" |
    iperf_rate | awk '{print $1 == "-" ? 0 : $1}'
}
if [ "$SCALING" -gt 0 ]; then
  [ $# = 1 ] || { echo "bench: --scaling takes one ferroguard command" >&2; exit 2; }
  [ "$ROUNDS_SET" = 1 ] || ROUNDS=1
  rows=(default)
  for k in $(seq 1 "$MAX_THREADS"); do rows+=("$k"); done
  echo "Scaling: gateway with $SCALING clients, server: $1; $SECONDS_EACH s per test, $ROUNDS round(s)," \
    "$(nproc) cores here"
  for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    printf '%-34s %9s %6s %8s %12s\n' "server threads" "tcp Mb/s" jain "min" "1 flow Mb/s"
    for row in "${rows[@]}"; do
      if [ "$row" = default ]; then
        GW_SERVER_ENV=() GW_SERVER_CPUS="" label="defaults, unpinned"
      else
        io=queues:$row; [ "$row" = 1 ] && io=one
        GW_SERVER_ENV=("FERROGUARD_IO_THREADS=$io" "FERROGUARD_CRYPTO_THREADS=$row")
        GW_SERVER_CPUS="0-$((row - 1))" label="io $io, crypto $row, CPUs 0-$((row - 1))"
        [ "$row" != 1 ] || label="io one, crypto 1, CPU 0"
      fi
      gateway_up "$1"
      read -r tcp tcp_jain tcp_min < <(gateway_round)
      single=$(single_flow)
      gateway_down
      printf '%-34s %9s %6s %8s %12s\n' "$label" "$tcp" "$tcp_jain" "$tcp_min" "$single"
      echo "$row $tcp $single" >>"$TMP/scaling.txt"
    done
  done
  echo "median over the rounds, ratio to the default row (tcp aggregate, single flow):"
  python3 - "$TMP/scaling.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, tcp, single = line.split()
    rows.setdefault(row, []).append((float(tcp), float(single)))
base = [statistics.median(v[i] for v in rows["default"]) for i in (0, 1)]
for row, values in rows.items():
    med = [statistics.median(v[i] for v in values) for i in (0, 1)]
    ratio = ["%.3f" % (m / b) if b else "-" for m, b in zip(med, base)]
    print("  %-8s tcp %8.0f (%s)  single flow %8.0f (%s)" % (row, med[0], ratio[0], med[1], ratio[1]))
PY
  exit 0
fi
if [ "$GATEWAY" -gt 0 ]; then
  echo "Gateway: 1 server, $GATEWAY clients (own namespace and daemon each), all sending at once, $SECONDS_EACH s"
  printf '%-40s %9s %6s %8s %9s %6s %8s %9s\n' implementation "tcp Mb/s" jain "min" "udp Mb/s" jain "min" sessions
  first=""
  for impl in "$@"; do
    gateway_up "$impl"
    if [ "${GATEWAY_CPU:-0}" = 1 ]; then
      perf stat -x, --per-thread -e task-clock,context-switches -p "${GW_PIDS[0]}" -o "$TMP/gw-perf" & gw_perf=$!
      gw_switches "${GW_PIDS[0]}" >"$TMP/gw-sw0"
      sleep 0.2
    fi
    read -r tcp tcp_jain tcp_min < <(gateway_round)
    if [ "${GATEWAY_CPU:-0}" = 1 ]; then
      kill -INT "$gw_perf"; wait "$gw_perf" 2>/dev/null || true
      gw_switches "${GW_PIDS[0]}" >"$TMP/gw-sw1"
      # GB carried in the round: the aggregate goodput over SECONDS_EACH.
      # Per thread ("name-tid,value,unit,event,..."), summed per thread name.
      awk -F, -v mbit="$tcp" -v s="$SECONDS_EACH" '
        NF < 4 { next }
        { name = $1; sub(/-[0-9]+$/, "", name) }
        $4 == "task-clock" { ms += $2; tms[name] += $2 } $4 == "context-switches" { cs += $2; tcs[name] += $2 }
        END { gb = mbit * s / 8000; if (gb <= 0) exit
          printf "    server during TCP: %.0f ms CPU/GB, %.0f context switches/GB (%.1f GB); per thread:", ms / gb, cs / gb, gb
          for (t in tcs) printf " %s %.0f ms %.0f cs", t, tms[t] / gb, tcs[t] / gb; printf "\n" }' \
        "$TMP/gw-perf"
      # The same switches split: voluntary (the thread waited) and not (it was preempted).
      paste "$TMP/gw-sw0" "$TMP/gw-sw1" | awk -v mbit="$tcp" -v s="$SECONDS_EACH" '
        { v += $3 - $1; n += $4 - $2 } END { gb = mbit * s / 8000; if (gb > 0)
          printf "    server threads during TCP: %.0f voluntary, %.0f involuntary switches/GB\n", v / gb, n / gb }'
    fi
    udp_before=$(gw_udp_counters)
    read -r udp udp_jain udp_min < <(gateway_round -u -b "$CLIENT_RATE" -l 1392)
    gw_udp_accounting "$udp_before" "$(gw_udp_counters)"
    sessions=$(ip netns exec fgbench-g wg show fgbenchg0 latest-handshakes | awk '$2 > 0' | wc -l)
    printf '%-40s %9s %6s %8s %9s %6s %8s %9s\n' "${impl:0:40}" "$tcp" "$tcp_jain" "$tcp_min" "$udp" "$udp_jain" \
      "$udp_min" "$sessions/$GATEWAY"
    if [ -z "$first" ]; then first="$tcp $udp"; else
      echo "    ratio to the first: tcp $(ratio "$tcp" "${first% *}"), udp $(ratio "$udp" "${first#* }")"
    fi
    gateway_down
  done
  exit 0
fi

# stage_profile: one TCP stream A -> B under `perf record` of both daemons; prints the stage model.
stage_profile() {
  local ta tb ra rb hz bytes side
  ta=$(cpu_ticks $PA); tb=$(cpu_ticks $PB)
  perf record -q -F 1999 -o "$TMP/a.perf" -p "$PA" >/dev/null 2>&1 & ra=$!
  perf record -q -F 1999 -o "$TMP/b.perf" -p "$PB" >/dev/null 2>&1 & rb=$!
  sleep 0.5
  bytes=$(on_cpu 1 ip netns exec $NA iperf3 -c "$TB" -p 5201 -t "$SECONDS_EACH" -J 2>/dev/null |
    python3 -c 'import json, sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bytes"]))')
  kill -INT $ra $rb; wait $ra $rb 2>/dev/null || true
  hz=$(getconf CLK_TCK)
  for side in a b; do
    perf report --stdio --no-children --sort dso,sym -i "$TMP/$side.perf" >"$TMP/$side.txt" 2>/dev/null
  done
  echo "  $((bytes * 8 / SECONDS_EACH / 1000000)) Mbit/s during the profile (perf slows it)"
  python3 scripts/stage-model.py --bytes "$bytes" --mss $((1420 - 40 - 12)) \
    --cpu-a "$(python3 -c "print(($(cpu_ticks $PA) - $ta) / $hz)")" \
    --cpu-b "$(python3 -c "print(($(cpu_ticks $PB) - $tb) / $hz)")" "$TMP/a.txt" "$TMP/b.txt"
}
if [ "$STAGES" = 1 ]; then
  command -v perf >/dev/null || { echo "bench: --stages needs perf" >&2; exit 1; }
  echo "Stage costs: one TCP stream A -> B, $SECONDS_EACH s, MTU 1420, underlay IPv$OUTER, traffic IPv$INNER"
  index=0
  for impl in "$@"; do
    echo "$impl"
    start_pair "$impl" "$index"
    stage_profile
    stop_pair
    index=$((index + 1))
  done
  exit 0
fi

echo "Underlay IPv$OUTER, traffic IPv$INNER, MTU 1420, $SECONDS_EACH s per test (Mbit/s, ms, CPU s/GB, RSS)"
header
first=""
index=0
for impl in "$@"; do
  start_pair "$impl" "$index"
  one=$(measure)
  row "$impl" 1 $one
  if [ -z "$first" ]; then first=$one; else ratios "$first" "$one"; fi
  if [ "$(peers_for "$impl")" -gt 1 ]; then
    read -r got secs_a secs_b rss_a rss_b status < <(add_peers "$impl")
    many=$(measure)
    row "$impl" "$got" $many
    read -r -a o <<<"$one"; read -r -a m <<<"$many"
    echo "    $got peers / 1 peer: tcp $(ratio "${m[0]}" "${o[0]}"), udp $(ratio "${m[5]}" "${o[5]}")," \
      "rtt p50 $(ratio "${m[7]}" "${o[7]}") (target: tcp and udp >= 0.90, rtt <= 1.10)"
    echo "    wg addconf of $((got - 1)) peers: A ${secs_a/%[0-9]/&s}, B ${secs_b/%[0-9]/&s} ($status);" \
      "RSS per extra peer: A $rss_a B, B $rss_b B"
  fi
  stop_pair
  index=$((index + 1))
done
