#!/bin/bash
# Where a `get=1` of many peers goes (issue #20): one daemon in a namespace of its own, N random peers (as
# bench-peers.sh makes them) in one `wg addconf`, then ROUNDS raw `get=1` reads of its socket, timed by a small
# Python client (the bench's "get=1 s"), and one `wg show dump`. With PERF=1 the daemon is recorded with
# `perf record -g` during ROUNDS more raw gets and the top symbols are printed.
#
#   sudo [PERF=1] [ROUNDS=3] scripts/profile-get.sh DAEMON [N]      (N defaults to 1048576)
#
# Several daemons alternate: sudo scripts/profile-get.sh /tmp/a 1048576; sudo scripts/profile-get.sh /tmp/b ...
set -euo pipefail
umask 077
cd "$(dirname "$0")/.."
BIN=${1:?daemon binary}; N=${2:-1048576}; ROUNDS=${ROUNDS:-3}
[ "$(id -u)" = 0 ] || { echo "profile-get: run as root" >&2; exit 1; }
. scripts/one-daemon.sh
one_daemon_loaded pg "$BIN" "$N" 51999
cat >"$TMP/get.py" <<'PY'
import socket, sys, time
for _ in range(int(sys.argv[2])):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(sys.argv[1])
    started = time.monotonic()
    sock.sendall(b"get=1\n\n")
    tail, count = b"", 0
    while not tail.endswith(b"errno=0\n\n"):
        data = sock.recv(1 << 20)
        if not data:
            sys.exit("get=1: connection closed early")
        count += len(data)
        tail = (tail + data)[-16:]
    print("get=1: %.3f s, %d bytes" % (time.monotonic() - started, count))
    sock.close()
PY
python3 "$TMP/get.py" "/var/run/wireguard/$IF.sock" "$ROUNDS"
if [ -n "${PERF:-}" ]; then
  perf record -F 999 -g -o "$TMP/perf.data" -p "$PID" -- python3 "$TMP/get.py" "/var/run/wireguard/$IF.sock" "$ROUNDS"
  perf report -i "$TMP/perf.data" --no-children --sort symbol 2>/dev/null | grep -E '^ +[0-9.]+%' | head -20
fi
started=$(date +%s.%N)
wg show "$IF" dump >/dev/null
echo "wg show dump: $(python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$started" "$(date +%s.%N)") s"
