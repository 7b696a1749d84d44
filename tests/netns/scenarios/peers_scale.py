#!/usr/bin/env python3
"""Helpers of the `peers_scale` scenario (python3 standard library only).

    peers_scale.py conf COUNT FILE
        Writes a wg config of COUNT peers with random keys, one /32 each in 10.128.0.0/9.
    peers_scale.py half SOCKET SECONDS READYFILE
        Sends half a set request (a whole peer, then half a line) and goes silent. Waits up to SECONDS for the
        daemon to drop the connection; prints "dropped after N s, answered 'A'" (exit 0) or "still connected
        after N s" (exit 1).
    peers_scale.py ping-window PING_OUTPUT START END
        Counts the replies of `ping -D` output whose timestamps lie between START and END (seconds since the
        epoch); prints the count.
"""

import base64
import os
import re
import socket
import sys
import time

sys.dont_write_bytecode = True  # the suite runs as root: leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fgnet  # noqa: E402 (tests/netns/fgnet.py, found through the path set just above)


def conf(count, path):
    with open(path, "w") as out:
        for i in range(1, count + 1):
            key = base64.b64encode(os.urandom(32)).decode()
            out.write("[Peer]\nPublicKey = %s\nAllowedIPs = 10.%d.%d.%d/32\n"
                      % (key, 128 + (i >> 16), (i >> 8) & 255, i & 255))


def half(path, seconds, ready):
    sock = fgnet.unix_connect(path)
    sock.sendall(b"set=1\npublic_key=" + b"ab" * 32 + b"\nallowed_ip=10.127.0.")
    fgnet.signal_ready(ready)
    started = time.monotonic()
    sock.settimeout(seconds)
    answer = b""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    except socket.timeout:
        print("still connected after %.1f s" % (time.monotonic() - started))
        return False
    except OSError as err:
        answer += (" (%s)" % err).encode()
    print("dropped after %.1f s, answered '%s'"
          % (time.monotonic() - started, answer.decode(errors="replace").strip()))
    return True


def ping_window(path, start, end):
    text = open(path).read()
    stamps = [float(m) for m in re.findall(r"^\[([0-9.]+)\].*time=", text, re.M)]
    print(sum(1 for t in stamps if start <= t <= end))


COMMANDS = {
    "conf": (conf, (int, str)),
    "half": (half, (str, float, str)),
    "ping-window": (ping_window, (str, float, float)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
