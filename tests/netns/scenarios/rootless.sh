# shellcheck shell=bash
# shellcheck disable=SC2154 # key1..key4, pub1..pub4 are set by make_keys (lib.sh)
# shellcheck disable=SC2016 # check ... eval '...' expands at the check, as in the other scenarios
# Scenario rootless: `ferroguard --rootless` (docs/ROOTLESS.md) run as nobody without any capability in ns1,
# its peer implementation 2 of the pair as a normal TUN daemon in ns2 (ferroguard, or wireguard-go in the
# mixed pair), over a veth pair (ns1 192.168.1.1 <-> ns2 192.168.1.2). Behind the peer (ns2, on its tunnel
# addresses 192.168.241.2 and fd41::2): an HTTP server with a 50 MB file (on both addresses), a DNS responder
# (names *.test), a sha256 sink and an iperf3 server. In ns1, on loopback: an HTTP server, an iperf3 server
# and a DNS responder (answering 127.0.0.53) for the reverse forwards.
#
#   1. the mode runs as nobody with no capability (CapEff, CapPrm, CapBnd all 0) and prints its socket;
#      wg show works against the socket through a mount namespace (unshare, as docs/ROOTLESS.md tells);
#   2. curl --socks5-hostname, curl -p --proxy (HTTP CONNECT) and curl --proxy (plain HTTP proxying) fetch the
#      50 MB file by name (resolved through the tunnel's DNS server), the local TCP forward and the reverse
#      forward fetch it too: the sha256 matches each time;
#      IPv6 inside the tunnel: ping to the stack's fd41::1, the file through a forward to [fd41::2]:8000 and
#      through SOCKS5 to [fd41::2];
#   3. iperf3 through the local forward (ns1 -> ns2) and through the reverse forward (ns2 -> ns1);
#   4. a UDP forward carries DNS queries to the resolver behind the peer, a UDP reverse forward carries the
#      peer's queries to a resolver on ns1's loopback (two tunnel endpoints); SOCKS5 UDP ASSOCIATE carries 20
#      numbered DNS queries to the resolver behind the peer, addressed by IP and by name (resolved through
#      the tunnel), drops a fragment and ends with its control connection; ping reaches the stack;
#   5. 200 connections at once through the forward all complete; with MaxConnections held, the next one is
#      refused and the held ones keep working;
#   6. a second instance with small limits: TotalBuffers and MaxHalfOpen each refuse the next connection
#      cleanly while the others work, and serve again once released; MaxUdpAssociations refuses a second
#      client, and a SOCKS5 UDP ASSOCIATE, until the first association's lifetime (UdpIdleTimeout) has
#      passed; then a SOCKS5 association is served, and closed after UdpIdleTimeout without traffic;
#   7. SIGTERM: exit status 0, the socket file removed, the UDP port free, no process left.
#   The pairs after the first (FGT_QUICK=1) skip 5 and 6: the proxy's limits do not depend on the peer.

ROOTLESS_USER=nobody
ROOTLESS_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rootless.py"
# wireguard-go has no rootless mode; implementation 1 must be a Ferroguard.
FGT_UNSUPPORTED[wireguard-go:rootless]="the rootless mode is Ferroguard's own (implementation 1 runs it)"

rootless_py() { python3 "$ROOTLESS_PY" "$@"; }

# rootless_background NS LABEL COMMAND...: start COMMAND in NS in the background (logged, stopped at exit).
rootless_background() {
	local ns=$1 label=$2
	shift 2
	ip netns exec "$ns" "$@" >>"$FGT_LOGDIR/rootless-$label.log" 2>&1 &
	FGT_PIDS+=("$!")
}

# rootless_config FILE KEY PUB_PEER ADDRESSES PORT EXTRA: write a configuration for nobody.
rootless_config() {
	local file=$1
	cat >"$file" <<-EOF
		[Interface]
		PrivateKey = $2
		Address = $4
		ListenPort = $5
		DNS = 192.168.241.2
		MTU = 1420

		[Peer]
		PublicKey = $3
		Endpoint = 192.168.1.2:2
		AllowedIPs = 192.168.241.0/24, fd41::/64
		PersistentKeepalive = 25

		$6
	EOF
	chown "$ROOTLESS_USER" "$file" && chmod 600 "$file"
}

# rootless_start NAME: start the mode as nobody without capabilities in ns1; waits for its socket.
rootless_start() {
	local name=$1 i pid
	ip netns exec "$NS1" setpriv --reuid="$ROOTLESS_USER" --regid="$(id -g "$ROOTLESS_USER")" \
		--clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs \
		env -i PATH=/usr/bin:/bin "$ROOTLESS_BIN" --rootless --socket-dir "$ROOTLESS_DIR/sock" \
		"$ROOTLESS_DIR/$name.conf" >>"$FGT_LOGDIR/daemon-rootless-$name.log" 2>&1 &
	pid=$!
	FGT_PIDS+=("$pid")
	ROOTLESS_PID[$name]=$pid
	for ((i = 0; i < 100; i++)); do
		[[ -S $ROOTLESS_DIR/sock/$name.sock ]] && return 0
		pid_running "$pid" || break
		sleep 0.05
	done
	fgt_log "rootless $name did not start"
	return 1
}

# rootless_no_capabilities PID: runs as nobody, with no capability in any set.
rootless_no_capabilities() {
	local pid=$1 field uid
	uid=$(id -u "$ROOTLESS_USER")
	equals Uid "$(awk '$1 == "Uid:" { print $2, $3, $4, $5 }' "/proc/$pid/status")" "$uid $uid $uid $uid" ||
		return 1
	for field in CapEff CapPrm CapBnd CapInh CapAmb; do
		equals "$field" "$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")" 0000000000000000 ||
			return 1
	done
}

# rootless_sha URL CURL_ARGS...: sha256 of URL fetched with curl (from ns1 unless ROOTLESS_CURL_NS is set).
rootless_fetch_ok() {
	local ns=$1 url=$2 sum
	shift 2
	sum=$(ip netns exec "$ns" timeout --foreground 60 curl -sS --fail --max-time 50 "$@" "$url" | sha256sum)
	fgt_log "fetched $url ($*): ${sum%% *}"
	[[ ${sum%% *} == "$ROOTLESS_SHA" ]]
}

# rootless_reverse_fetch_ok URL: rootless_fetch_ok from ns2 through the reverse forward. The stack sends
# the 50 MB uphill to the peer; against wireguard-go on a busy 2-core host, whose socket overflows under
# the stack's unpaced bursts (smoltcp has no SACK and no pacing: docs/ROOTLESS.md, "SendBuffer"), one
# fetch in several did not finish within its 50 s (CI, 2026-12-08). So with a peer that is not Ferroguard
# a failed fetch is noted and tried once more; the check still needs one whole, correct copy.
rootless_reverse_fetch_ok() {
	rootless_fetch_ok "$NS2" "$1" && return 0
	[[ $(impl_kind 2) == ferroguard ]] && return 1
	note "rootless: the reverse forward's 50 MB fetch failed once against $(impl_kind 2); trying again"
	rootless_fetch_ok "$NS2" "$1"
}

# rootless_iperf NS LABEL ARGS...: iperf3 client, non-zero throughput.
rootless_iperf() {
	local ns=$1 label=$2 json
	shift 2
	json="$FGT_LOGDIR/rootless-iperf-$label.json"
	ip netns exec "$ns" timeout --foreground 20 iperf3 -J -t "${FGT_IPERF_TIME:-2}" "$@" >"$json" 2>&1
	local rate
	rate=$(iperf_throughput "$json") || return 1
	note "rootless $label: $rate"
}

# rootless_wg_show NAME: wg(8) finds the socket when the socket directory is mounted on
# /var/run/wireguard in a private mount namespace (as an unprivileged user would, in a user namespace).
rootless_wg_show() {
	local out
	out=$(setpriv --reuid="$ROOTLESS_USER" --regid="$(id -g "$ROOTLESS_USER")" --clear-groups \
		unshare -rm sh -c 'mount --bind "$1" /var/run/wireguard && wg show "$2" latest-handshakes' \
		_ "$ROOTLESS_DIR/sock" "$1" 2>&1)
	fgt_log "wg show through unshare: $out"
	[[ $out == "$pub2"*[1-9]* ]]
}

# rootless_stop NAME: SIGTERM; exit 0, socket gone, UDP port free.
rootless_stop() {
	local name=$1 port=$2 pid=${ROOTLESS_PID[$1]} rc
	kill -TERM "$pid" 2>/dev/null
	wait_pid_exit "$pid" 5 || return 1
	wait "$pid"
	rc=$?
	fgt_log "rootless $name exited with $rc"
	((rc == 0)) && [[ ! -e $ROOTLESS_DIR/sock/$name.sock ]] &&
		[[ -z $(ss -N "$NS1" -uanH "sport = :$port" 2>/dev/null) ]]
}

scenario_rootless() {
	if [[ $(impl_kind 1) != ferroguard ]]; then
		supported rootless "rootless" 1
		return
	fi
	local -A ROOTLESS_PID=()
	# nobody's files (configurations, socket directory) and the served file, apart from the log
	# directory (root's, 0700); removed at exit, before the suite's own clean-up.
	ROOTLESS_DIR=$(mktemp -d /tmp/fgt-rootless-XXXXXX) || fgt_abort "mktemp failed"
	trap 'rm -rf -- "$ROOTLESS_DIR"; fgt_cleanup' EXIT
	must mkdir -p "$ROOTLESS_DIR/files" "$ROOTLESS_DIR/sock"
	must chmod 755 "$ROOTLESS_DIR"
	must chown "$ROOTLESS_USER" "$ROOTLESS_DIR/sock"
	impl_command 1
	ROOTLESS_BIN=$(realpath -- "$(command -v -- "${FGT_CMD[0]}")")
	must head -c 50M /dev/urandom -- >"$ROOTLESS_DIR/files/big.bin"
	ROOTLESS_SHA=$(sha256sum "$ROOTLESS_DIR/files/big.bin" | cut -d' ' -f1)

	make_namespaces
	must ip1 link add veth1 type veth peer name veth2
	must ip1 link set veth2 netns "$NS2"
	must ip1 addr add 192.168.1.1/24 dev veth1
	must ip2 addr add 192.168.1.2/24 dev veth2
	must ip1 link set veth1 up
	must ip2 link set veth2 up
	must start_daemon 2 "$IF2" "$NS2"
	must ip2 addr add 192.168.241.2/24 dev "$IF2"
	must ip2 addr add fd41::2/64 dev "$IF2" nodad
	must wgc set "$IF2" private-key <(echo "$key2") listen-port 2 \
		peer "$pub1" allowed-ips 192.168.241.1/32,fd41::1/128 endpoint 192.168.1.1:51000 \
		peer "$pub3" allowed-ips 192.168.241.3/32 endpoint 192.168.1.1:51001
	must ip2 link set up dev "$IF2"

	# Behind the peer.
	local ready="$FGT_LOGDIR/rootless-ready"
	rootless_background "$NS2" http2 python3 -m http.server --bind 192.168.241.2 8000 \
		--directory "$ROOTLESS_DIR/files"
	rootless_background "$NS2" http2v6 python3 -m http.server --bind fd41::2 8000 \
		--directory "$ROOTLESS_DIR/files"
	rootless_background "$NS2" dns python3 "$ROOTLESS_PY" dns-serve 192.168.241.2 53 192.168.241.2 "$ready-dns"
	rootless_background "$NS2" sink python3 "$ROOTLESS_PY" sink-serve 192.168.241.2 7000 "$ready-sink"
	rootless_background "$NS2" iperf2 iperf3 -s -B 192.168.241.2 -p 5201
	# Local services of the reverse forwards.
	rootless_background "$NS1" http1 python3 -m http.server --bind 127.0.0.1 9001 \
		--directory "$ROOTLESS_DIR/files"
	rootless_background "$NS1" iperf1 iperf3 -s -B 127.0.0.1 -p 5202
	rootless_background "$NS1" dns1 python3 "$ROOTLESS_PY" dns-serve 127.0.0.1 5300 127.0.0.53 "$ready-dns1"
	must wait_listening "$NS2" t 8000
	must wait_listening "$NS2" t 7000
	must wait_listening "$NS2" u 53
	must wait_listening "$NS2" t 5201
	must wait_listening "$NS1" t 9001
	must wait_listening "$NS1" t 5202
	must wait_listening "$NS1" u 5300

	rootless_config "$ROOTLESS_DIR/main.conf" "$key1" "$pub2" "192.168.241.1/24, fd41::1/64" 51000 "
[Forward]
TCP = 127.0.0.1:8080 -> 192.168.241.2:8000
TCP = 127.0.0.1:8086 -> [fd41::2]:8000
TCP = 127.0.0.1:7000 -> 192.168.241.2:7000
TCP = 127.0.0.1:5201 -> 192.168.241.2:5201
UDP = 127.0.0.1:5353 -> 192.168.241.2:53
ReverseTCP = 9000 -> 127.0.0.1:9001
ReverseTCP = 5202 -> 127.0.0.1:5202
ReverseUDP = 5300 -> 127.0.0.1:5300

[Socks5]
Listen = 127.0.0.1:1080

[HttpProxy]
Listen = 127.0.0.1:8118

[Limits]
MaxConnections = 210
MaxHalfOpen = 256"
	check "rootless: starts as $ROOTLESS_USER without capabilities and opens its socket" rootless_start main
	local pid=${ROOTLESS_PID[main]}
	check "rootless: no capability in any set, uid $ROOTLESS_USER" rootless_no_capabilities "$pid"
	check "rootless: prints the configuration socket" \
		grep -q "configuration socket: $ROOTLESS_DIR/sock/main.sock" "$FGT_LOGDIR/daemon-rootless-main.log"
	check "rootless: ping from the peer reaches the stack" ping_retry "$NS2" 192.168.241.1
	check "rootless: wg show through a mount namespace (handshake done)" rootless_wg_show main

	check "rootless: curl --socks5-hostname fetches 50 MB by name, sha256 matches" \
		rootless_fetch_ok "$NS1" http://files.test:8000/big.bin --socks5-hostname 127.0.0.1:1080
	check "rootless: curl -p --proxy (HTTP CONNECT) fetches 50 MB by name, sha256 matches" \
		rootless_fetch_ok "$NS1" http://files.test:8000/big.bin -p --proxy http://127.0.0.1:8118
	check "rootless: curl --proxy (plain HTTP, absolute URI, no CONNECT) fetches 50 MB by name, sha256 matches" \
		rootless_fetch_ok "$NS1" http://files.test:8000/big.bin --proxy http://127.0.0.1:8118
	check "rootless: the local TCP forward carries 50 MB, sha256 matches" \
		rootless_fetch_ok "$NS1" http://127.0.0.1:8080/big.bin
	check "rootless: the reverse forward carries 50 MB from ns1's local server, sha256 matches" \
		rootless_reverse_fetch_ok http://192.168.241.1:9000/big.bin
	check "rootless: IPv6 in the tunnel: ping from the peer reaches the stack's fd41::1" \
		ping_retry "$NS2" fd41::1
	check "rootless: IPv6 in the tunnel: the local forward to [fd41::2]:8000 carries 50 MB, sha256 matches" \
		rootless_fetch_ok "$NS1" http://127.0.0.1:8086/big.bin
	check "rootless: IPv6 in the tunnel: curl --socks5-hostname fetches 50 MB from [fd41::2], sha256 matches" \
		rootless_fetch_ok "$NS1" "http://[fd41::2]:8000/big.bin" --socks5-hostname 127.0.0.1:1080
	check "rootless: iperf3 through the local forward" rootless_iperf "$NS1" forward -c 127.0.0.1 -p 5201
	check "rootless: iperf3 through the reverse forward" rootless_iperf "$NS2" reverse -c 192.168.241.1 -p 5202
	check "rootless: the UDP forward carries a DNS query and its answer" \
		eval '[[ $(n1 python3 "$ROOTLESS_PY" dns-query 127.0.0.1 5353 files.test 3) == 192.168.241.2 ]]'
	check "rootless: the UDP reverse forward carries a DNS query from the peer to ns1's local resolver" \
		eval '[[ $(n2 python3 "$ROOTLESS_PY" dns-query 192.168.241.1 5300 r.test 3) == 127.0.0.53 ]]'
	check "rootless: the UDP reverse forward answers a second tunnel endpoint (its own association)" \
		eval '[[ $(n2 python3 "$ROOTLESS_PY" dns-query 192.168.241.1 5300 s.test 3) == 127.0.0.53 ]]'
	check "rootless: SOCKS5 UDP ASSOCIATE: 20 DNS queries to 192.168.241.2:53, fragment dropped, ends with TCP" \
		n1 timeout --foreground 30 python3 "$ROOTLESS_PY" socks-udp 127.0.0.1 1080 192.168.241.2 53 20 0
	check "rootless: SOCKS5 UDP ASSOCIATE: 20 DNS queries to dns.test:53 (resolved through the tunnel)" \
		n1 timeout --foreground 30 python3 "$ROOTLESS_PY" socks-udp 127.0.0.1 1080 dns.test 53 20 0
	# The connection and resource limits are the proxy's own, whatever the peer: the pairs after the first
	# (FGT_QUICK=1) leave them to the first pair.
	if [[ ${FGT_QUICK:-0} == 1 ]]; then
		skip "rootless: connection and resource limits (sections 5 and 6)" \
			"quick run: the proxy's limits do not depend on the peer (the first pair checks them)"
	else
		check "rootless: 200 connections at once through the forward all complete" \
			n1 timeout --foreground 90 python3 "$ROOTLESS_PY" concurrent 127.0.0.1 7000 200 20000
		check "rootless: MaxConnections (210) held: the next is refused, the held ones work, then served again" \
			n1 timeout --foreground 60 python3 "$ROOTLESS_PY" hold-and-probe 127.0.0.1 7000 210 1 127.0.0.1 7000
		check "rootless: the refusal is logged with its limit" \
			grep -q "MaxConnections" "$FGT_LOGDIR/daemon-rootless-main.log"

		rootless_config "$ROOTLESS_DIR/small.conf" "$key3" "$pub2" 192.168.241.3/24 51001 "
	[Forward]
	TCP = 127.0.0.1:7100 -> 192.168.241.2:7000
	UDP = 127.0.0.1:5354 -> 192.168.241.2:53

	[Socks5]
	Listen = 127.0.0.1:1081

	[Limits]
	MaxHalfOpen = 2
	ConnectionBuffer = 64K
	SendBuffer = 64K
	TotalBuffers = 384K
	MaxUdpAssociations = 1
	UdpIdleTimeout = 2"
		check "rootless: a second instance with small limits starts" rootless_start small
		check "rootless: TotalBuffers (3 connections) held: the next is refused, the held ones work" \
			n1 timeout --foreground 30 python3 "$ROOTLESS_PY" hold-and-probe 127.0.0.1 7100 3 1 127.0.0.1 7100
		check "rootless: MaxHalfOpen (2 silent SOCKS5 clients): the next connection is refused, then served" \
			n1 timeout --foreground 30 python3 "$ROOTLESS_PY" hold-and-probe 127.0.0.1 1081 2 0 127.0.0.1 7100
		check "rootless: MaxUdpAssociations: a first client is answered" \
			eval '[[ $(n1 python3 "$ROOTLESS_PY" dns-query 127.0.0.1 5354 a.test 3) == 192.168.241.2 ]]'
		check "rootless: MaxUdpAssociations: a second client is refused while the first is alive" \
			eval '[[ $(n1 python3 "$ROOTLESS_PY" dns-query 127.0.0.1 5354 b.test 1) == "no answer" ]]'
		sleep 3
		check "rootless: after UdpIdleTimeout the second client is answered" \
			eval '[[ $(n1 python3 "$ROOTLESS_PY" dns-query 127.0.0.1 5354 c.test 3) == 192.168.241.2 ]]'
		check "rootless: MaxUdpAssociations: a SOCKS5 UDP ASSOCIATE is refused while that association lives" \
			n1 timeout --foreground 10 python3 "$ROOTLESS_PY" socks-udp-refused 127.0.0.1 1081
		sleep 3
		check "rootless: then a SOCKS5 UDP association is served, and closed after UdpIdleTimeout (2 s) idle" \
			n1 timeout --foreground 30 python3 "$ROOTLESS_PY" socks-udp 127.0.0.1 1081 192.168.241.2 53 5 2
		check "rootless: each limit's refusal is logged" eval \
			'grep -q TotalBuffers "$FGT_LOGDIR/daemon-rootless-small.log" &&
			 grep -q MaxHalfOpen "$FGT_LOGDIR/daemon-rootless-small.log" &&
			 grep -q MaxUdpAssociations "$FGT_LOGDIR/daemon-rootless-small.log"'
		check "rootless: the first instance still serves after all that" \
			rootless_fetch_ok "$NS1" http://files.test:8000/big.bin --socks5-hostname 127.0.0.1:1080
	fi

	check "rootless: SIGTERM: exit 0, socket removed, UDP port free (main)" rootless_stop main 51000
	if [[ ${FGT_QUICK:-0} != 1 ]]; then
		check "rootless: SIGTERM: exit 0, socket removed, UDP port free (small)" rootless_stop small 51001
	fi
	check "rootless: nothing left in the socket directory" \
		eval '[[ -z $(ls -A "$ROOTLESS_DIR/sock") ]]'
	rm -f -- "$ROOTLESS_DIR/files/big.bin"
}
