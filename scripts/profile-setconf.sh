#!/bin/bash
# What a `wg setconf` of many peers costs the daemon (issue #20), without traffic beside it: one daemon in a
# namespace of its own, N random peers (as bench-peers.sh makes them) in one `wg addconf`, then ROUNDS times a
# `wg setconf` of N other random peers (every old peer removed, every new one added). Per round: the command's
# wall time, and the daemon's minor page faults, user and system CPU over it (from /proc/PID/stat); with
# LOG_LEVEL=debug the daemon's own line for the request (its lock holds, the longest and its step) is printed.
#
#   sudo [ROUNDS=2] [LOG_LEVEL=debug] scripts/profile-setconf.sh DAEMON [N]      (N defaults to 1048576)
#
# Several daemons alternate: scripts/profile-setconf.sh /tmp/a; scripts/profile-setconf.sh /tmp/b; ...
set -euo pipefail
umask 077
cd "$(dirname "$0")/.."
BIN=${1:?daemon binary}; N=${2:-1048576}; ROUNDS=${ROUNDS:-2}
[ "$(id -u)" = 0 ] || { echo "profile-setconf: run as root" >&2; exit 1; }
. scripts/one-daemon.sh
one_daemon_loaded ps "$BIN" "$N" 51998
# stat fields 10, 14, 15: minor faults, user and system ticks (the command name has no spaces here).
counters() { awk '{ print $10, $14, $15 }' "/proc/$PID/stat"; }
for round in $(seq "$ROUNDS"); do
  { printf '[Interface]\nPrivateKey = %s\nListenPort = 51998\n' "$(cat "$TMP/key")"
    python3 scripts/random-peers.py "$N" | sed '/^\[Interface\]/,/^$/d'; } >"$TMP/setconf.conf"
  read -r faults0 user0 sys0 < <(counters)
  started=$(date +%s.%N)
  wg setconf "$IF" "$TMP/setconf.conf"
  ended=$(date +%s.%N)
  read -r faults1 user1 sys1 < <(counters)
  hz=$(getconf CLK_TCK)
  awk -v b="$BIN" -v r="$round" -v n="$N" -v s="$started" -v e="$ended" -v f=$((faults1 - faults0)) \
    -v u=$((user1 - user0)) -v y=$((sys1 - sys0)) -v hz="$hz" -v rss="$(awk '/VmRSS/ { print $2 }' "/proc/$PID/status")" \
    'BEGIN { printf "%s round %d: setconf of %d peers %.2f s, daemon %d minor faults, CPU user %.2f s, system %.2f s, RSS %d kB\n",
      b, r, n, e - s, f, u / hz, y / hz, rss }'
  grep "set of $N peers" "$TMP/daemon.log" | tail -1 | sed 's/^/    /' || true
done
