#!/usr/bin/env bash
# Measures the rootless mode (docs/ROOTLESS.md) against Ferroguard's own TUN mode, in the same run, between
# two network namespaces (as root; the rootless mode itself runs as nobody without capabilities):
#
#   scripts/bench-rootless.sh [-t SECONDS] [--rounds R] [--mb MB] [--rtt-count C] [--send-buffer SIZE]
#
# --send-buffer SIZE sets the rootless mode's [Limits] SendBuffer (default: the mode's default, 128K).
#
#   ns1 (client side)                                        ns2 (server side)
#     ferroguard -f fgbXa   192.168.241.1  (TUN mode)   --\
#     ferroguard --rootless 192.168.241.3  (as nobody)  ----> veth ----> ferroguard -f fgbXb 192.168.241.2
#       forward 127.0.0.1:15201 -> 192.168.241.2:5201                     iperf3 -s :5201
#       forward 127.0.0.1:17001 -> 192.168.241.2:7001                     bench-serve :7001 (rootless.py)
#       SOCKS5  127.0.0.1:1080
#
# Per round (R rounds, default 3, the modes interleaved so that drift from other load cancels out):
#   TCP up/down   iperf3 (one stream, T s, default 5; "down" is -R) from ns1 to 192.168.241.2 through the TUN
#                 interface, and to 127.0.0.1:15201 through the rootless forward;
#   SOCKS5 up/down one transfer of MB (default 200) MB with rootless.py's client, through the SOCKS5 proxy,
#                 and the same client straight through the TUN interface for scale;
#   RTT           the median of C (default 1000) one-byte TCP round trips, through TUN and through the forward.
# RSS of the rootless process: idle (after the handshake) and peak (VmHWM at the end).
# Prints one line per measurement and round, then the medians and the rootless/TUN ratios.
# onetun (github.com/aramperes/onetun, smoltcp-based port forwarding) is measured the same way as the
# rootless forward when it is installed: `onetun` on PATH, or ONETUN=/path/to/onetun (`cargo install onetun`).
# It runs as nobody in ns1 with a key of its own (192.168.241.4), forwarding 127.0.0.1:25201 and :27001.
# PEER=/path/to/wireguard-go runs that as the ns2 daemon (the peer of all three) instead of Ferroguard.
set -euo pipefail

seconds=5 rounds=3 mb=200 rtt_count=1000 send_buffer=""
while (($#)); do
	case $1 in
	-t) seconds=$2; shift ;;
	--rounds) rounds=$2; shift ;;
	--mb) mb=$2; shift ;;
	--rtt-count) rtt_count=$2; shift ;;
	--send-buffer) send_buffer=$2; shift ;;
	*) echo "usage: $0 [-t SECONDS] [--rounds R] [--mb MB] [--rtt-count C] [--send-buffer SIZE]" >&2; exit 2 ;;
	esac
	shift
done
[[ $EUID == 0 ]] || { echo "$0: must run as root (network namespaces)" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${FERROGUARD:-$root/target/release/ferroguard}
peer=${PEER:-$bin}
py=$root/tests/netns/scenarios/rootless.py
for tool in ip wg iperf3 python3 setpriv; do
	command -v "$tool" >/dev/null || { echo "$0: $tool is missing" >&2; exit 1; }
done
[[ -x $bin ]] || { echo "$0: $bin missing (cargo build --release)" >&2; exit 1; }

id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
ns1=fgb-$id-1 ns2=fgb-$id-2 if1=fgb${id}a if2=fgb${id}b
work=$(mktemp -d /tmp/fgb-rootless-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	ip netns del "$ns1" 2>/dev/null || true
	ip netns del "$ns2" 2>/dev/null || true
	rm -f "/var/run/wireguard/$if1.sock" "/var/run/wireguard/$if2.sock"
	rm -rf -- "$work"
}
trap cleanup EXIT

n1() { ip netns exec "$ns1" "$@"; }
n2() { ip netns exec "$ns2" "$@"; }
wait_for() { # wait_for SECONDS COMMAND...
	local i
	for ((i = 0; i < $1 * 20; i++)); do "${@:2}" && return 0; sleep 0.05; done
	echo "$0: timed out waiting for: ${*:2}" >&2
	return 1
}

ip netns add "$ns1"
ip netns add "$ns2"
n1 ip link set lo up
n2 ip link set lo up
n1 ip link add veth1 type veth peer name veth2
n1 ip link set veth2 netns "$ns2"
n1 ip addr add 192.168.1.1/24 dev veth1
n2 ip addr add 192.168.1.2/24 dev veth2
n1 ip link set veth1 up
n2 ip link set veth2 up

key1=$(wg genkey) key2=$(wg genkey) key3=$(wg genkey) key4=$(wg genkey)
pub1=$(wg pubkey <<<"$key1") pub2=$(wg pubkey <<<"$key2") pub3=$(wg pubkey <<<"$key3")
pub4=$(wg pubkey <<<"$key4")
onetun=${ONETUN:-$(command -v onetun || true)}

# Background processes are started with ip netns exec itself (not through n1/n2, shell functions that would
# fork a subshell), so that $! is the process: it is what cleanup signals and whose memory is read.
ip netns exec "$ns1" "$bin" -f "$if1" >"$work/tun1.log" 2>&1 &
pids+=($!)
WG_PROCESS_FOREGROUND=1 ip netns exec "$ns2" "$peer" -f "$if2" >"$work/tun2.log" 2>&1 &
pids+=($!)
wait_for 5 test -S "/var/run/wireguard/$if1.sock"
wait_for 5 test -S "/var/run/wireguard/$if2.sock"
n1 ip addr add 192.168.241.1/24 dev "$if1"
n2 ip addr add 192.168.241.2/24 dev "$if2"
wg set "$if1" private-key <(echo "$key1") listen-port 1 \
	peer "$pub2" allowed-ips 192.168.241.2/32 endpoint 192.168.1.2:2
wg set "$if2" private-key <(echo "$key2") listen-port 2 \
	peer "$pub1" allowed-ips 192.168.241.1/32 endpoint 192.168.1.1:1 \
	peer "$pub3" allowed-ips 192.168.241.3/32 endpoint 192.168.1.1:51001 \
	peer "$pub4" allowed-ips 192.168.241.4/32
n1 ip link set up dev "$if1"
n2 ip link set up dev "$if2"

ip netns exec "$ns2" iperf3 -s -B 192.168.241.2 -p 5201 >"$work/iperf.log" 2>&1 &
pids+=($!)
ip netns exec "$ns2" python3 "$py" bench-serve 192.168.241.2 7001 "$work/ready" >"$work/serve.log" 2>&1 &
pids+=($!)
wait_for 5 test -e "$work/ready"

mkdir -p "$work/sock"
chown nobody "$work/sock"
cat >"$work/bench.conf" <<EOF
[Interface]
PrivateKey = $key3
Address = 192.168.241.3/24
ListenPort = 51001

[Peer]
PublicKey = $pub2
Endpoint = 192.168.1.2:2
AllowedIPs = 192.168.241.2/32
PersistentKeepalive = 25

[Forward]
TCP = 127.0.0.1:15201 -> 192.168.241.2:5201
TCP = 127.0.0.1:17001 -> 192.168.241.2:7001

[Socks5]
Listen = 127.0.0.1:1080
EOF
[[ -n $send_buffer ]] && printf '\n[Limits]\nSendBuffer = %s\n' "$send_buffer" >>"$work/bench.conf"
chown nobody "$work/bench.conf"
chmod 600 "$work/bench.conf"
ip netns exec "$ns1" setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups --inh-caps=-all --bounding-set=-all \
	--no-new-privs "$bin" --rootless --socket-dir "$work/sock" "$work/bench.conf" >"$work/rootless.log" 2>&1 &
rootless_pid=$!
pids+=("$rootless_pid")
wait_for 5 test -S "$work/sock/bench.sock"
# Handshakes, then a moment of quiet for the idle figure.
wait_for 10 n1 ping -c1 -W1 192.168.241.2 >/dev/null
wait_for 10 n2 ping -c1 -W1 192.168.241.3 >/dev/null
sleep 1
rss() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
rss_idle=$(rss "$rootless_pid" VmRSS)
if [[ -n $onetun ]]; then
	ip netns exec "$ns1" setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups --inh-caps=-all \
		--bounding-set=-all --no-new-privs "$onetun" --endpoint-addr 192.168.1.2:2 \
		--endpoint-public-key "$pub2" --private-key "$key4" --source-peer-ip 192.168.241.4 --keep-alive 25 \
		127.0.0.1:25201:192.168.241.2:5201 127.0.0.1:27001:192.168.241.2:7001 >"$work/onetun.log" 2>&1 &
	onetun_pid=$!
	pids+=("$onetun_pid")
	onetun_listening() { [[ -n $(ss -N "$ns1" -tlnH 'sport = :27001') ]]; }
	wait_for 5 onetun_listening
	sleep 1
	onetun_idle=$(rss "$onetun_pid" VmRSS)
fi

iperf() { # iperf LABEL ARGS...: Mbit/s received
	n1 iperf3 -J -t "$seconds" "${@:2}" >"$work/$1.json"
	python3 - "$work/$1.json" <<'PY'
import json, sys
end = json.load(open(sys.argv[1]))["end"]
print("%.1f" % (end["sum_received"]["bits_per_second"] / 1e6))
PY
}

declare -A results=()
record() { # record NAME VALUE
	results[$1]+="$2 "
	printf '%-22s round %d: %s\n' "$1" "$round" "$2"
}
bytes=$((mb * 1024 * 1024))
for ((round = 1; round <= rounds; round++)); do
	record "TCP up, TUN" "$(iperf tun-up -c 192.168.241.2 -p 5201)"
	record "TCP up, rootless" "$(iperf fwd-up -c 127.0.0.1 -p 15201)"
	record "TCP down, TUN" "$(iperf tun-down -c 192.168.241.2 -p 5201 -R)"
	record "TCP down, rootless" "$(iperf fwd-down -c 127.0.0.1 -p 15201 -R)"
	record "client up, TUN" "$(n1 python3 "$py" transfer direct 192.168.241.2 7001 up "$bytes")"
	record "SOCKS5 up, rootless" "$(n1 python3 "$py" transfer socks5:127.0.0.1:1080 192.168.241.2 7001 up "$bytes")"
	record "client down, TUN" "$(n1 python3 "$py" transfer direct 192.168.241.2 7001 down "$bytes")"
	record "SOCKS5 down, rootless" "$(n1 python3 "$py" transfer socks5:127.0.0.1:1080 192.168.241.2 7001 down "$bytes")"
	record "RTT us, TUN" "$(n1 python3 "$py" rtt direct 192.168.241.2 7001 "$rtt_count")"
	record "RTT us, rootless" "$(n1 python3 "$py" rtt direct 127.0.0.1 17001 "$rtt_count")"
	if [[ -n $onetun ]]; then
		record "TCP up, onetun" "$(iperf onetun-up -c 127.0.0.1 -p 25201 || echo 0)"
		record "TCP down, onetun" "$(iperf onetun-down -c 127.0.0.1 -p 25201 -R || echo 0)"
		record "RTT us, onetun" "$(n1 python3 "$py" rtt direct 127.0.0.1 27001 "$rtt_count" || echo 0)"
	fi
done
rss_peak=$(rss "$rootless_pid" VmHWM)
[[ -n $onetun ]] && onetun_peak=$(rss "$onetun_pid" VmHWM)

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
echo
echo "rootless mode vs TUN mode, $rounds rounds interleaved, iperf3 -t $seconds, transfers of $mb MB, $rtt_count round trips, SendBuffer ${send_buffer:-default}"
printf '| %-14s | %12s | %12s | %16s |\n' "measure" "TUN" "rootless" "rootless / TUN"
printf '|%s|%s|%s|%s|\n' "----------------" "--------------" "--------------" "------------------"
for pair in "TCP up:TCP up, TUN:TCP up, rootless" "TCP down:TCP down, TUN:TCP down, rootless" \
	"SOCKS5 up:client up, TUN:SOCKS5 up, rootless" "SOCKS5 down:client down, TUN:SOCKS5 down, rootless" \
	"RTT (us):RTT us, TUN:RTT us, rootless"; do
	IFS=: read -r label tun rootless <<<"$pair"
	a=$(median "${results[$tun]}") b=$(median "${results[$rootless]}")
	printf '| %-14s | %12s | %12s | %16s |\n' "$label" "$a" "$b" "$(ratio "$b" "$a")"
done
echo
echo "rootless RSS: idle ${rss_idle} kB, peak ${rss_peak} kB"
echo "(throughput in Mbit/s, medians over the rounds; SOCKS5's TUN column is the same client straight through the TUN interface)"
if [[ -n $onetun ]]; then
	echo
	echo "onetun ($("$onetun" --version 2>/dev/null || echo "$onetun")), same forward, same rounds"
	printf '| %-14s | %12s | %12s | %18s |\n' "measure" "onetun" "rootless" "rootless / onetun"
	printf '|%s|%s|%s|%s|\n' "----------------" "--------------" "--------------" "--------------------"
	for label in "TCP up" "TCP down" "RTT us"; do
		a=$(median "${results[$label, onetun]}") b=$(median "${results[$label, rootless]}")
		printf '| %-14s | %12s | %12s | %18s |\n' "$label" "$a" "$b" "$(ratio "$b" "$a")"
	done
	echo "onetun RSS: idle ${onetun_idle} kB, peak ${onetun_peak} kB"
else
	echo "onetun: not installed, not measured"
fi
