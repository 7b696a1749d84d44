#!/bin/bash
# Peer-scaling benchmark (issue #20): what a device with many peers costs, and whether traffic keeps flowing
# while it is configured and read.
#
#   scripts/bench-peers.sh [--sizes N,N,...] [IMPL...]
#
# IMPL is a daemon command that takes "-f INTERFACE" (default: target/release/ferroguard, then wireguard-go and
# boringtun-cli where installed); --sizes defaults to 65536,262144,1048576. wireguard-go is run once, at its
# limit (65 536 peers in all: the tunnel peer and 65 535 more). boringtun is run at the sizes up to 262 144 only:
# at about 19 KB per peer, 2^20 peers would take 20 GB of this machine's 24.
#
# For each implementation and size: two namespaces joined by a veth, one daemon each, one peer each (the
# tunnel 10.79.0.1 <-> 10.79.0.2). While B pings A through the tunnel every 10 ms, A gets N random peers (one
# /32 each, every second one also an IPv6 /128, every fourth an endpoint) in one `wg addconf`. Measured:
#   load s       wall time of that `wg addconf` (its exit status is reported: "fail" when non-zero)
#   again s      the same `wg addconf` again (every peer exists: the update path)
#   one ms       `wg set` of one more peer on the full device, `wg` and `ip netns exec` included ("refused" when
#                the daemon refuses it: wireguard-go at its limit)
#   setconf s    `wg setconf` of the tunnel peer and the N peers (replace_peers: all removed, then added)
#   KB/peer      resident memory after the load minus before it, per peer (VmRSS, after 2 s)
#   peak/settled the daemon's peak resident memory (VmHWM) over its resident memory after the load
#   show s       `wg show A dump` of the full device (most of it is wg's own parsing and printing)
#   get s        the same request (get=1) read raw from the socket by a small Python client: the daemon's part;
#                three reads in a row, the median (all three are printed to stderr as a "get=1 reads" line)
#   ping p50/p99/max (lost) with nothing else going on (3 s, before the load: what the machine's own load
#                costs), during the load, during `wg show` (three in a row) and during a metrics scrape (three
#                in a row; daemons with --metrics-listen in their --help, i.e. ferroguard builds)
# The count of peers (`wg show A peers | wc -l`) must be N+1, else the row says so.
# Needs root, ip, wg, ping, python3, curl. Prints one line per run and a Markdown table at the end.
# KEEP_LOGS=DIR keeps side A's daemon log of each run as DIR/a-N-IMPL.log (with LOG_LEVEL=debug, ferroguard logs
# each request's longest engine-lock hold there; the script then prints, per run, the longest hold of each kind of
# request: the addconf and setconf, the gets, the metrics walks).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=65536,262144,1048576
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) SIZES=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    -*) echo "bench-peers: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
IMPLS=("$@")
if [ ${#IMPLS[@]} = 0 ]; then
  IMPLS=(target/release/ferroguard)
  command -v wireguard-go >/dev/null && IMPLS+=(wireguard-go)
  BORINGTUN=$(command -v boringtun-cli || ls ~/.cargo/bin/boringtun-cli 2>/dev/null || true)
  [ -n "$BORINGTUN" ] && IMPLS+=("$BORINGTUN --disable-drop-privileges")
fi
[ "$(id -u)" = 0 ] || { echo "bench-peers: run as root" >&2; exit 1; }
for tool in ip wg ping python3 curl timeout; do
  command -v $tool >/dev/null || { echo "bench-peers: $tool is needed" >&2; exit 1; }
done

TMP=$(mktemp -d) NA=fgpeers-a NB=fgpeers-b IA=fgpeersa0 IB=fgpeersb0 METRICS=127.0.0.1:9587
cleanup() {
  set +e
  for ns in $NA $NB; do ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null; done
  sleep 0.3
  ip netns del $NA 2>/dev/null; ip netns del $NB 2>/dev/null
  rm -f /var/run/wireguard/$IA.sock /var/run/wireguard/$IB.sock
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
umask 077
for side in a b; do wg genkey >"$TMP/$side.key"; wg pubkey <"$TMP/$side.key" >"$TMP/$side.pub"; done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }

# peers_conf COUNT FILE: COUNT random peers (see the header), generated once per size.
peers_conf() {
  [ -s "$2" ] && return
  python3 scripts/random-peers.py "$1" >"$2"
}

# has_metrics IMPL: whether the daemon serves metrics (a ferroguard build, whatever its file is called), read
# from its binary: some daemons take any word, --help included, as an interface name and start.
has_metrics() {
  local words
  read -r -a words <<<"$1"
  grep -qa -- --metrics-listen "$(command -v "${words[0]}")"
}

# start_pair IMPL: both daemons up with the tunnel between them; sets PA PB.
start_pair() {
  local words extra=()
  read -r -a words <<<"$1"
  ip netns add $NA; ip netns add $NB
  ip link add fgpeers0 netns $NA type veth peer name fgpeers1 netns $NB
  ip -n $NA addr add 192.0.2.1/24 dev fgpeers0; ip -n $NA link set fgpeers0 up; ip -n $NA link set lo up
  ip -n $NB addr add 192.0.2.2/24 dev fgpeers1; ip -n $NB link set fgpeers1 up; ip -n $NB link set lo up
  if has_metrics "$1"; then extra=(--metrics-listen $METRICS); fi
  ip netns exec $NA env WG_PROCESS_FOREGROUND=1 "${words[@]}" ${extra[@]+"${extra[@]}"} -f $IA >"$TMP/a.log" 2>&1 &
  PA=$!
  ip netns exec $NB env WG_PROCESS_FOREGROUND=1 "${words[@]}" -f $IB >"$TMP/b.log" 2>&1 &
  PB=$!
  for _ in $(seq 100); do
    if wg show $IA >/dev/null 2>&1 && wg show $IB >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  PA=$(pgrep -P $PA | head -1 || echo $PA); PA=${PA:-$!}
  ip netns exec $NA wg set $IA private-key "$TMP/a.key" listen-port 51820 \
    peer "$(cat "$TMP/b.pub")" allowed-ips 10.79.0.2/32 endpoint 192.0.2.2:51820
  ip netns exec $NB wg set $IB private-key "$TMP/b.key" listen-port 51820 \
    peer "$(cat "$TMP/a.pub")" allowed-ips 10.79.0.1/32 endpoint 192.0.2.1:51820 persistent-keepalive 25
  ip -n $NA addr add 10.79.0.1/24 dev $IA; ip -n $NA link set $IA up
  ip -n $NB addr add 10.79.0.2/24 dev $IB; ip -n $NB link set $IB up
  ip netns exec $NB ping -c 3 -i 0.2 -W 2 10.79.0.1 >/dev/null
}

stop_pair() {
  for ns in $NA $NB; do ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  for _ in $(seq 100); do
    [ -e /var/run/wireguard/$IA.sock ] || [ -e /var/run/wireguard/$IB.sock ] || break
    sleep 0.1
  done
  ip netns del $NA 2>/dev/null || true; ip netns del $NB 2>/dev/null || true
  rm -f /var/run/wireguard/$IA.sock /var/run/wireguard/$IB.sock
}

# ping_start / ping_stop: B pings A through the tunnel every 10 ms; ping_stop prints "p50/p99/max (lost)" in ms.
ping_start() {
  ip netns exec $NB ping -D -i 0.01 -W 30 10.79.0.1 >"$TMP/ping.txt" 2>&1 &
  PING=$!
  sleep 0.2
}
ping_stop() {
  sleep 0.2
  kill -INT $PING 2>/dev/null || true
  wait $PING 2>/dev/null || true
  python3 - "$TMP/ping.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
t = sorted(float(m) for m in re.findall(r"time=([0-9.]+)", text))
sent = re.search(r"(\d+) packets transmitted", text)
lost = int(sent.group(1)) - len(t) if sent else -1
if not t:
    print("-/-/- (%d)" % lost); sys.exit()
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]
print("%.2f/%.2f/%.1f (%d)" % (pick(0.5), pick(0.99), t[-1], lost))
PY
}

# timed CMD...: wall seconds of CMD in namespace A, or "fail" (also after 300 s: boringtun 0.7.1 stopped
# answering its socket after a load of 65 536 peers).
timed() {
  local t0
  t0=$(now)
  if timeout 300 ip netns exec $NA "$@" >/dev/null 2>>"$TMP/errors"; then since "$t0"; else echo fail; fi
}

# raw_get: seconds to read a whole get=1 answer from A's socket (the daemon's time, without wg's).
raw_get() {
  python3 - /var/run/wireguard/$IA.sock <<'PY'
import socket, sys, time
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
started = time.monotonic()
sock.sendall(b"get=1\n\n")
tail = b""
while not tail.endswith(b"errno=0\n\n"):
    data = sock.recv(1 << 20)
    if not data:
        print("fail"); sys.exit()
    tail = (tail + data)[-16:]
print("%.3f" % (time.monotonic() - started))
PY
}

# hold_summary LOG IMPL N: the longest engine-lock hold per kind of request in a ferroguard debug log (the lines
# of src/holds.rs), with how many requests of that kind there were.
hold_summary() {
  python3 - "$@" <<'PY'
import re, sys
log, impl, n = sys.argv[1:4]
longest = {}
for line in open(log, errors="replace"):
    m = re.search(r": (set of \d+ peers|get|metrics walk): ([0-9.]+) s, \d+ engine-lock holds, .* the longest (\d+) us", line)
    if not m:
        continue
    kind = "set (large)" if m.group(1).startswith("set of") and int(m.group(1).split()[2]) > 1 else m.group(1)
    if kind.startswith("set of"):
        continue
    count, worst = longest.get(kind, (0, 0))
    longest[kind] = (count + 1, max(worst, int(m.group(3))))
if longest:
    print("holds %s %s: %s" % (impl, n, ", ".join("%s %d x, longest %d us" % (k, c, w) for k, (c, w) in sorted(longest.items()))))
PY
}

ROWS=()
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run_one() { # IMPL N
  local impl=$1 n=$2 conf=$TMP/peers-$2.conf rss0 load again one setconf kb peak show count
  local ping_idle ping_load ping_show ping_scrape get
  peers_conf "$n" "$conf"
  start_pair "$impl"
  rss0=$(rss_kb $PA)
  ping_start
  sleep 3
  ping_idle=$(ping_stop)
  ping_start
  load=$(timed wg addconf $IA "$conf")
  ping_load=$(ping_stop)
  sleep 2
  count=$(ip netns exec $NA wg show $IA peers | wc -l)
  kb=$(( ($(rss_kb $PA) - rss0) * 1000 / n ))
  peak=$(python3 -c "print('%.2f' % ($(hwm_kb $PA) / max(1, $(rss_kb $PA))))")
  # Three reads, the median reported: the first read after a load is often the slowest (its buffers are new).
  local gets; gets=$(for _ in 1 2 3; do raw_get; done | tr '\n' ' ')
  echo "get=1 reads $impl $n: $gets" >&2
  get=$(printf '%s\n' $gets | sort -n | sed -n 2p)
  [[ $gets == *fail* ]] && get=fail
  ping_start
  show=$(timed wg show $IA dump)
  timed wg show $IA dump >/dev/null; timed wg show $IA dump >/dev/null
  ping_show=$(ping_stop)
  ping_scrape=-
  if has_metrics "$impl"; then
    ping_start
    for _ in 1 2 3; do ip netns exec $NA curl -sf -o /dev/null "http://$METRICS/metrics" || echo "scrape failed" >>"$TMP/errors"; done
    ping_scrape=$(ping_stop)
  fi
  again=$(timed wg addconf $IA "$conf")
  local key; key=$(wg genkey | wg pubkey)
  one=$(timed wg set $IA peer "$key" allowed-ips 10.127.255.254/32)
  one=$(python3 -c "import sys; print('%.1f' % (float(sys.argv[1]) * 1000) if sys.argv[1] != 'fail' else 'refused')" "$one")
  { printf '[Peer]\nPublicKey = %s\nAllowedIPs = 10.79.0.2/32\nEndpoint = 192.0.2.2:51820\n' "$(cat "$TMP/b.pub")"; cat "$conf"; } >"$TMP/setconf.conf"
  setconf=$(timed wg setconf $IA "$TMP/setconf.conf")
  [ "$count" = $((n + 1)) ] || count="$count (expected $((n + 1)))"
  if [ -n "${KEEP_LOGS:-}" ]; then
    cp "$TMP/a.log" "$KEEP_LOGS/a-$n-$(basename "${impl%% *}").log"
    hold_summary "$TMP/a.log" "$impl" "$n"
  fi
  stop_pair
  local kbs; kbs=$(python3 -c "print('%.2f' % ($kb / 1000))")
  local row="| $impl | $n | $load | $again | $one | $setconf | $kbs | $peak | $show | $get | $ping_idle | $ping_load | $ping_show | $ping_scrape | $count |"
  echo "$row"
  ROWS+=("$row")
}

for impl in "${IMPLS[@]}"; do
  case $impl in
    # At most 65 536 peers in all: the tunnel peer and 65 535 more.
    *wireguard-go*) run_one "$impl" 65535 ;;
    # About 19 KB per peer: 2^20 peers would not fit beside the other work of a 24 GB machine.
    *boringtun*) for n in ${SIZES//,/ }; do if [ "$n" -le 262144 ]; then run_one "$impl" "$n"; fi; done ;;
    *) for n in ${SIZES//,/ }; do run_one "$impl" "$n"; done ;;
  esac
done

echo
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| implementation | peers | load s | again s | one more ms | setconf s | KB/peer | peak/settled | wg show s | get=1 s (median of 3) | ping idle p50/p99/max ms (lost) | during load | during wg show | during scrape | peers listed |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ -s "$TMP/errors" ]; then echo; echo "errors:"; sort "$TMP/errors" | uniq -c | head -20; fi
