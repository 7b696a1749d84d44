#!/usr/bin/env bash
# Compares userspace WireGuard implementations side by side between two network
# namespaces, with public tools only (iproute2, wireguard-tools, iperf3, ping).
#
#   scripts/bench.sh [-t SECONDS] IMPL [IMPL...]
#
# IMPL is a command that follows wireguard-go's convention (`IMPL -f IFACE`
# creates the TUN IFACE and /var/run/wireguard/IFACE.sock), e.g.
#   scripts/bench.sh target/release/ferroguard wireguard-go \
#       "boringtun-cli --disable-drop-privileges"
# Each implementation runs in both namespaces in turn; for each it prints TCP
# (one stream, A->B), UDP offered at 1 Gbit/s (received rate and loss), the
# average ping RTT and the daemons' CPU during the TCP run, then the ratios to
# the first implementation. Needs root. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=5
if [ "${1:-}" = -t ]; then SECONDS_EACH=$2; shift 2; fi
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
for tool in ip wg iperf3 ping python3; do
  command -v $tool >/dev/null || { echo "bench: $tool is needed" >&2; exit 1; }
done

A=fgbench-a B=fgbench-b TMP=$(mktemp -d)
cleanup() {
  set +e
  for ns in $(ip netns list | awk '/^fgbench-/ {print $1}'); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
  done
  sleep 0.3
  for ns in $(ip netns list | awk '/^fgbench-/ {print $1}'); do ip netns del "$ns"; done
  rm -f /var/run/wireguard/fgbench[ab][0-9]*.sock
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
umask 077
for side in a b; do wg genkey >"$TMP/$side.key"; wg pubkey <"$TMP/$side.key" >"$TMP/$side.pub"; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run_one IMPL: prints "tcp_mbit udp_mbit udp_loss rtt_ms cpu_a cpu_b"
run_one() {
  local impl=$1 ia=fgbencha$2 ib=fgbenchb$2 pa pb
  local A=$A$2 B=$B$2
  ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
  ip netns add $A; ip netns add $B
  ip link add fgbench0 netns $A type veth peer name fgbench1 netns $B
  ip -n $A addr add 192.0.2.1/24 dev fgbench0; ip -n $A link set fgbench0 up; ip -n $A link set lo up
  ip -n $B addr add 192.0.2.2/24 dev fgbench1; ip -n $B link set fgbench1 up; ip -n $B link set lo up
  # shellcheck disable=SC2086
  ip netns exec $A env WG_PROCESS_FOREGROUND=1 $impl -f $ia >"$TMP/a.log" 2>&1 & pa=$!
  # shellcheck disable=SC2086
  ip netns exec $B env WG_PROCESS_FOREGROUND=1 $impl -f $ib >"$TMP/b.log" 2>&1 & pb=$!
  local up=0
  for _ in $(seq 50); do
    if wg show $ia >/dev/null 2>&1 && wg show $ib >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
  done
  [ $up = 1 ] || { echo "bench: $impl did not start" >&2; cat "$TMP/a.log" "$TMP/b.log" >&2; return 1; }
  ip netns exec $A wg set $ia private-key "$TMP/a.key" listen-port 51820 \
    peer "$(cat "$TMP/b.pub")" allowed-ips 10.78.0.2/32 endpoint 192.0.2.2:51820
  ip netns exec $B wg set $ib private-key "$TMP/b.key" listen-port 51820 \
    peer "$(cat "$TMP/a.pub")" allowed-ips 10.78.0.1/32 endpoint 192.0.2.1:51820
  for side in $A:$ia:1 $B:$ib:2; do
    IFS=: read -r ns dev n <<<"$side"
    ip -n "$ns" link set "$dev" mtu 1420; ip -n "$ns" addr add "10.78.0.$n/24" dev "$dev"; ip -n "$ns" link set "$dev" up
  done
  ip netns exec $A ping -c 3 -i 0.2 -W 2 10.78.0.2 >/dev/null
  ip netns exec $B iperf3 -s -D -p 5201 >/dev/null 2>&1; sleep 0.3
  local ta tb
  ta=$(cpu_ticks "$(pgrep -P $pa | head -1 || echo $pa)"); tb=$(cpu_ticks "$(pgrep -P $pb | head -1 || echo $pb)")
  local tcp
  tcp=$(ip netns exec $A iperf3 -c 10.78.0.2 -p 5201 -t "$SECONDS_EACH" -J |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))')
  local cpu_a cpu_b hz
  hz=$(getconf CLK_TCK)
  cpu_a=$(( ($(cpu_ticks "$(pgrep -P $pa | head -1 || echo $pa)") - ta) * 100 / hz / SECONDS_EACH ))
  cpu_b=$(( ($(cpu_ticks "$(pgrep -P $pb | head -1 || echo $pb)") - tb) * 100 / hz / SECONDS_EACH ))
  local udp
  udp=$(ip netns exec $A iperf3 -c 10.78.0.2 -p 5201 -u -b 1G -l 1350 -w 2M -t "$SECONDS_EACH" -J |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum"]; print(round(s["bits_per_second"]*(1-s["lost_percent"]/100)/1e6), round(s["lost_percent"],2))')
  local rtt
  rtt=$(ip netns exec $A ping -c 100 -i 0.01 -q 10.78.0.2 | awk -F/ '/rtt/ {print $5}')
  echo "$tcp $udp $rtt $cpu_a $cpu_b"
  kill $pa $pb 2>/dev/null; wait $pa $pb 2>/dev/null || true
  ip netns pids $B 2>/dev/null | xargs -r kill 2>/dev/null || true
  # The next implementation uses the same socket names: wait until these are gone.
  for _ in $(seq 50); do
    [ -e /var/run/wireguard/$ia.sock ] || [ -e /var/run/wireguard/$ib.sock ] || break
    sleep 0.1
  done
  rm -f /var/run/wireguard/$ia.sock /var/run/wireguard/$ib.sock
}

printf '%-40s %9s %9s %7s %8s %9s\n' implementation "tcp Mb/s" "udp Mb/s" "loss %" "rtt ms" "cpu A/B %"
first=""
index=0
for impl in "$@"; do
  read -r tcp udp loss rtt ca cb < <(run_one "$impl" "$index")
  index=$((index + 1))
  printf '%-40s %9s %9s %7s %8s %9s\n' "$impl" "$tcp" "$udp" "$loss" "$rtt" "$ca/$cb"
  if [ -z "$first" ]; then first=$tcp; else
    echo "    tcp ratio to the first: $(python3 -c "print(round($tcp/$first, 2))")"
  fi
done
