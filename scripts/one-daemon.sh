# shellcheck shell=bash
# Sourced by the profile-*.sh scripts: one daemon in a namespace of its own, loaded with N random peers.
#
#   one_daemon_loaded NAME DAEMON N PORT
#
# Starts DAEMON (a command taking "-f INTERFACE") in namespace fgNAME-PID as interface fgNAMEPID (NAME: two
# letters, so that the interface name stays within 15 characters), gives it a private key (in $TMP/key) and
# PORT, and N random peers (scripts/random-peers.py, as bench-peers.sh makes them) in one `wg addconf`. Sets
# TMP (a private directory), NS, IF and PID (the daemon's), and a trap that stops the daemon and removes the
# namespace, the socket and TMP on exit.
one_daemon_loaded() {
  local name=$1 daemon=$2 count=$3 port=$4
  TMP=$(mktemp -d) NS=fg$name-$$ IF=fg$name$$
  trap one_daemon_cleanup EXIT INT TERM
  python3 scripts/random-peers.py "$count" >"$TMP/peers.conf"
  ip netns add "$NS"
  ip netns exec "$NS" env WG_PROCESS_FOREGROUND=1 "$daemon" -f "$IF" >"$TMP/daemon.log" 2>&1 &
  for _ in $(seq 100); do wg show "$IF" >/dev/null 2>&1 && break; sleep 0.1; done
  wg genkey >"$TMP/key"
  wg set "$IF" private-key "$TMP/key" listen-port "$port"
  wg addconf "$IF" "$TMP/peers.conf"
  PID=$(ip netns pids "$NS" | head -1)
}

one_daemon_cleanup() {
  set +e
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null
  sleep 0.3
  ip netns del "$NS" 2>/dev/null
  rm -f "/var/run/wireguard/$IF.sock"
  rm -rf "$TMP"
}
