#!/usr/bin/env python3
"""random-peers.py COUNT: a wg(8) configuration of COUNT peers with random public keys, for the benchmarks
(scripts/bench.sh --peers, scripts/bench-peers.sh). Peer i gets 10.(128 + i>>16).(i>>8 & 255).(i & 255)/32, every
2nd also fd00:5ca1::(i>>16):(i & 0xffff)/128, every 4th an endpoint in 198.51.100.0/24; none of them is ever sent
to."""
import base64
import os
import sys

count = int(sys.argv[1])
out = sys.stdout
for i in range(1, count + 1):
    key = base64.b64encode(os.urandom(32)).decode()
    ips = "10.%d.%d.%d/32" % (128 + (i >> 16), (i >> 8) & 255, i & 255)
    if i % 2 == 0:
        ips += ", fd00:5ca1::%x:%x/128" % (i >> 16, i & 0xFFFF)
    out.write("[Peer]\nPublicKey = %s\nAllowedIPs = %s\n" % (key, ips))
    if i % 4 == 0:
        out.write("Endpoint = 198.51.100.%d:%d\n" % (i % 254 + 1, 1024 + i % 60000))
