#!/usr/bin/env python3
"""Helpers of the `faults` scenario (python3 standard library only).

    faults.py relay LISTEN A_PORT B_PORT CTRL_PORT READYFILE
        A UDP relay on 127.0.0.1:LISTEN between the daemons on 127.0.0.1:A_PORT and 127.0.0.1:B_PORT that can
        reorder, duplicate and delay what it forwards. Commands on 127.0.0.1:CTRL_PORT (see Relay.command; sent
        with "fgnet.py relay-ctrl CTRL_PORT COMMAND"):
        "set reorder=W dup=0|1 delay=MS" answers "ok", "stats" answers a JSON object, "reset" zeroes the
        statistics and answers "ok".
    faults.py sniff IFACE PORTS OUTFILE READYFILE SECONDS
        Records the WireGuard handshake messages (UDP payload type 1, 2 or 3) between the comma-separated
        PORTS seen leaving IFACE (an AF_PACKET socket: the datagrams are seen before the receiving side's
        nftables hooks, so dropped ones are recorded too), one line each: "KERNEL_TIMESTAMP TYPE SPORT DPORT".
    faults.py intervals SNIFFFILE TYPE DPORT
        Prints the seconds between consecutive messages of TYPE sent to DPORT, one a line.
    faults.py tcp-recv | tcp-send | udp-recv | udp-send ...
        The verifiable transfers of fgnet.py (same arguments as there).
    faults.py ct-flush
        Flushes the IPv4 and IPv6 conntrack tables of the current network namespace (ctnetlink), like
        "conntrack -F".
    faults.py ping-gaps PINGLOG START_EPOCH
        Reads "ping -D" output: prints "replies N max_gap S first_after S last_before S" (max_gap: longest
        time between consecutive replies; first_after: from START_EPOCH to the first reply after it;
        last_before: the last reply before it, seconds before START_EPOCH).
"""

import heapq
import json
import os
import random
import re
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # the suite runs as root: leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fgnet  # noqa: E402 (tests/netns/fgnet.py, found through the path set just above)


# ---------------------------------------------------------------------------------------------------------
# The relay
# ---------------------------------------------------------------------------------------------------------

# A reorder window is released after this long even when not full, so that a handshake or a lone ping
# is not held forever (seconds).
REORDER_FLUSH_AFTER = 0.02


class Relay(fgnet.PortPairRelay):
    """Forwards datagrams between two ports, with optional reordering, duplication and delay."""

    # Drain what is queued at each wake-up, bounded so that timers still run under a flood.
    batch = 256

    def __init__(self, listen, a_port, b_port, ctrl_port):
        super().__init__(listen, a_port, b_port, ctrl_port, buffer_bytes=4 << 20)
        self.reorder = 0
        self.dup = False
        self.delay = 0.0
        self.rng = random.Random(os.urandom(16))
        # Per destination port: datagrams held for reordering, and when the first of them arrived.
        self.window = {a_port: [], b_port: []}
        self.window_since = {a_port: None, b_port: None}
        self.delayed = []  # heap of (due, sequence, data, destination port)
        self.sequence = 0
        self.reset()

    def reset(self):
        self.stats = {str(p): {"datagrams": 0, "bytes": 0, "data_datagrams": 0, "duplicates": 0,
                               "out_of_order": 0, "send_errors": 0} for p in self.partner}
        # Highest transport counter forwarded per (destination, receiver index).
        self.highest = {}

    def command(self, text):
        words = text.split()
        if not words:
            return "error empty command"
        if words[0] == "set":
            for word in words[1:]:
                key, _, value = word.partition("=")
                if key == "reorder":
                    self.reorder = int(value)
                elif key == "dup":
                    self.dup = value == "1"
                elif key == "delay":
                    self.delay = float(value) / 1000
                else:
                    return "error unknown setting %s" % key
            return "ok"
        if words[0] == "stats":
            return json.dumps(self.stats, sort_keys=True)
        if words[0] == "reset":
            self.reset()
            return "ok"
        return "error unknown command %s" % words[0]

    def send_now(self, data, dst):
        stats = self.stats[str(dst)]
        try:
            self.send(data, dst)
        except OSError:
            stats["send_errors"] += 1
            return
        stats["datagrams"] += 1
        stats["bytes"] += len(data)
        if len(data) >= 16 and data[0] == 4:
            stats["data_datagrams"] += 1
            index, counter = struct.unpack_from("<IQ", data, 4)
            key = (dst, index)
            highest = self.highest.get(key, -1)
            if counter < highest:
                stats["out_of_order"] += 1
            else:
                self.highest[key] = counter

    def forward(self, data, dst):
        """Past the reordering stage: duplicate and delay."""
        copies = 2 if self.dup else 1
        if copies == 2:
            self.stats[str(dst)]["duplicates"] += 1
        for _ in range(copies):
            if self.delay > 0:
                self.sequence += 1
                heapq.heappush(self.delayed, (time.monotonic() + self.delay, self.sequence, data, dst))
            else:
                self.send_now(data, dst)

    def release_window(self, dst):
        held = self.window[dst]
        self.rng.shuffle(held)
        for data in held:
            self.forward(data, dst)
        held.clear()
        self.window_since[dst] = None

    def datagram(self, data, src_port, dst):
        if self.reorder <= 1:
            self.forward(data, dst)
            return
        if not self.window[dst]:
            self.window_since[dst] = time.monotonic()
        self.window[dst].append(data)
        if len(self.window[dst]) >= self.reorder:
            self.release_window(dst)

    def next_deadline(self):
        deadlines = [since + REORDER_FLUSH_AFTER for since in self.window_since.values() if since is not None]
        if self.delayed:
            deadlines.append(self.delayed[0][0])
        return min(deadlines) if deadlines else None

    def run_timers(self):
        now = time.monotonic()
        for dst, since in self.window_since.items():
            if since is not None and now >= since + REORDER_FLUSH_AFTER:
                self.release_window(dst)
        while self.delayed and self.delayed[0][0] <= now:
            _, _, data, dst = heapq.heappop(self.delayed)
            self.send_now(data, dst)


# ---------------------------------------------------------------------------------------------------------
# Handshake timestamps
# ---------------------------------------------------------------------------------------------------------

def receive_stamped(sock):
    """(packet, ancillary data, flags, address) of the next packet: its first 128 bytes (enough for the
    IP and UDP headers and the message type) and room for one SO_TIMESTAMPNS timestamp."""
    return sock.recvmsg(128, socket.CMSG_SPACE(16))


def sniff(iface, ports, outfile, ready, seconds):
    wanted = {int(p) for p in ports.split(",")}
    sock = fgnet.packet_socket(iface, fgnet.ETH_P_ALL, rcvbuf=4 << 20, timestamps=True)
    deadline = fgnet.deadline_after(seconds)
    with open(outfile, "w") as out:
        fgnet.signal_ready(ready)
        for packet, ancillary, _, address in fgnet.receive_until(sock, deadline, receive_stamped):
            # On loopback every packet is seen twice (leaving and arriving): keep the outgoing copy.
            if address[2] != fgnet.PACKET_OUTGOING:
                continue
            udp = fgnet.ipv4_udp(packet)
            if udp is None or not udp[2]:  # not UDP over IPv4, or not even a message type
                continue
            sport, dport, payload = udp
            kind = payload[0]
            if sport not in wanted or dport not in wanted or kind not in (1, 2, 3):
                continue
            stamp = time.time()
            for level, ctype, data in ancillary:
                if level == socket.SOL_SOCKET and ctype == fgnet.SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data)
                    stamp = sec + nsec / 1e9
            out.write("%.6f %d %d %d\n" % (stamp, kind, sport, dport))
            out.flush()


def intervals(sniff_file, kind, dport):
    stamps = []
    with open(sniff_file) as lines:
        for line in lines:
            fields = line.split()
            if len(fields) == 4 and int(fields[1]) == kind and int(fields[3]) == dport:
                stamps.append(float(fields[0]))
    for earlier, later in zip(stamps, stamps[1:]):
        print("%.3f" % (later - earlier))


# ---------------------------------------------------------------------------------------------------------
# Conntrack flush (what "conntrack -F" sends), so that no conntrack tool is needed
# ---------------------------------------------------------------------------------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2


def ct_flush():
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.settimeout(3)
    ok = True
    for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
        # nlmsghdr + nfgenmsg (family, version 0, resource id 0): a delete without a tuple deletes them all.
        message = struct.pack("=IHHII", 20, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                              NLM_F_REQUEST | NLM_F_ACK, sequence, 0) + struct.pack("=BBH", family, 0, 0)
        sock.send(message)
        answer = sock.recv(4096)
        kind = struct.unpack_from("=H", answer, 4)[0]
        error = struct.unpack_from("=i", answer, 16)[0] if kind == NLMSG_ERROR else -1
        if error != 0:
            sys.stderr.write("conntrack flush (family %d): error %d\n" % (family, error))
            ok = False
    return ok


# ---------------------------------------------------------------------------------------------------------
# Ping gaps
# ---------------------------------------------------------------------------------------------------------

def ping_gaps(log, start):
    replies = []
    with open(log) as lines:
        for line in lines:
            match = re.match(r"\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=\d+", line)
            if match:
                replies.append(float(match.group(1)))
    gaps = [later - earlier for earlier, later in zip(replies, replies[1:])]
    after = [t - start for t in replies if t >= start]
    before = [start - t for t in replies if t < start]
    print("replies %d max_gap %.2f first_after %s last_before %s" % (
        len(replies), max(gaps) if gaps else -1,
        "%.2f" % after[0] if after else "none", "%.2f" % before[-1] if before else "none"))


def relay(listen, a_port, b_port, ctrl_port, ready):
    Relay(listen, a_port, b_port, ctrl_port).serve(ready)


COMMANDS = {
    "relay": (relay, (int, int, int, int, str)),
    "sniff": (sniff, (str, str, str, str, float)),
    "intervals": (intervals, (str, int, int)),
    "tcp-recv": (fgnet.tcp_recv, (str, int, str, float)),
    "tcp-send": (fgnet.tcp_send, (str, int, int, str, str)),
    "udp-recv": (fgnet.udp_recv, (str, int, str, float)),
    "udp-send": (fgnet.udp_burst, (str, int, int, int)),
    "ct-flush": (ct_flush, ()),
    "ping-gaps": (ping_gaps, (str, float)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
