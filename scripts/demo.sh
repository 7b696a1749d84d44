#!/usr/bin/env bash
# Ferroguard demo: build, then run a WireGuard tunnel between two network
# namespaces and show traffic flowing through it (ping and iperf3), with the
# figures printed. Needs root; installs iproute2, wireguard-tools and iperf3
# with apt-get if they are missing. Cleans up after itself.
#
#   [ns fgdemo-a] wg0 10.77.0.1 -- veth 192.0.2.1 <==> 192.0.2.2 veth -- wg0 10.77.0.2 [ns fgdemo-b]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (network namespaces and TUN devices)" >&2; exit 1; }

need=()
for tool in ip:iproute2 wg:wireguard-tools iperf3:iperf3 ping:iputils-ping; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "demo: cargo is needed (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/ferroguard

A=fgdemo-a B=fgdemo-b
TMP=$(mktemp -d)
cleanup() {
  set +e
  for ns in $A $B; do
    ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null
  done
  sleep 0.3
  ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true
ip netns add $A; ip netns add $B
ip link add fgdemo0 netns $A type veth peer name fgdemo1 netns $B
ip -n $A addr add 192.0.2.1/24 dev fgdemo0; ip -n $A link set fgdemo0 up; ip -n $A link set lo up
ip -n $B addr add 192.0.2.2/24 dev fgdemo1; ip -n $B link set fgdemo1 up; ip -n $B link set lo up

umask 077
for side in a b; do wg genkey > "$TMP/$side.key"; wg pubkey < "$TMP/$side.key" > "$TMP/$side.pub"; done
start() { # ns iface
  ip netns exec "$1" env WG_PROCESS_FOREGROUND=1 "$BIN" -f "$2" >"$TMP/$2.log" 2>&1 &
  for _ in $(seq 50); do
    [ -S "/var/run/wireguard/$2.sock" ] && ip -n "$1" link show "$2" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "demo: ferroguard did not start in $1" >&2; cat "$TMP/$2.log" >&2; exit 1
}
start $A fgdemoa
start $B fgdemob
ip netns exec $A wg set fgdemoa private-key "$TMP/a.key" listen-port 51820 \
  peer "$(cat "$TMP/b.pub")" allowed-ips 10.77.0.2/32 endpoint 192.0.2.2:51820
ip netns exec $B wg set fgdemob private-key "$TMP/b.key" listen-port 51820 \
  peer "$(cat "$TMP/a.pub")" allowed-ips 10.77.0.1/32 endpoint 192.0.2.1:51820
ip -n $A addr add 10.77.0.1/24 dev fgdemoa; ip -n $A link set fgdemoa up
ip -n $B addr add 10.77.0.2/24 dev fgdemob; ip -n $B link set fgdemob up

echo "== ping through the tunnel"
ip netns exec $A ping -c 5 -i 0.2 -W 2 10.77.0.2 | tail -2
echo "== iperf3 TCP, 5 s, A -> B"
ip netns exec $B iperf3 -s -1 -D -p 5201 >/dev/null 2>&1
sleep 0.3
ip netns exec $A iperf3 -c 10.77.0.2 -p 5201 -t 5 -f m | grep -E "sender|receiver"
echo "== wg show (side A)"
ip netns exec $A wg show fgdemoa
