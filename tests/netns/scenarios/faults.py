#!/usr/bin/env python3
"""Helpers of the `faults` scenario (python3 standard library only).

    faults.py relay LISTEN A_PORT B_PORT CTRL_PORT READYFILE
        A UDP relay on 127.0.0.1:LISTEN between the daemons on 127.0.0.1:A_PORT and 127.0.0.1:B_PORT that can
        reorder, duplicate and delay what it forwards. Commands on 127.0.0.1:CTRL_PORT (see Relay.command):
        "set reorder=W dup=0|1 delay=MS" answers "ok", "stats" answers a JSON object, "reset" zeroes the
        statistics and answers "ok".
    faults.py ctrl CTRL_PORT COMMAND
        Sends one command to the relay and prints the answer.
    faults.py sniff IFACE PORTS OUTFILE READYFILE SECONDS
        Records the WireGuard handshake messages (UDP payload type 1, 2 or 3) between the comma-separated
        PORTS seen leaving IFACE (an AF_PACKET socket: the datagrams are seen before the receiving side's
        nftables hooks, so dropped ones are recorded too), one line each: "KERNEL_TIMESTAMP TYPE SPORT DPORT".
    faults.py intervals SNIFFFILE TYPE DPORT
        Prints the seconds between consecutive messages of TYPE sent to DPORT, one a line.
    faults.py tcp-recv ADDR PORT READYFILE SECONDS
        Accepts one TCP connection, reads it to the end; prints "BYTES SHA256".
    faults.py tcp-send ADDR PORT BYTES CONNECTEDFILE GOFILE
        Connects, creates CONNECTEDFILE, waits (up to 15 s) for GOFILE, sends BYTES pseudo-random bytes and
        waits for the receiver to close; prints "BYTES SHA256 SECONDS" (from the first byte to the close).
    faults.py udp-recv ADDR PORT READYFILE SECONDS
        Counts datagrams carrying "seq N" for SECONDS; prints "received R unique U duplicates D corrupt C"
        (corrupt: a datagram "seq N" whose bytes are not those udp-send gave datagram N; not counted in R).
    faults.py udp-send ADDR PORT COUNT SIZE
        Sends COUNT datagrams "seq 0" .. "seq COUNT-1", paced (1 per ms); with SIZE > 0 each is filled up
        to SIZE bytes with bytes derived from its number.
    faults.py ct-flush
        Flushes the IPv4 and IPv6 conntrack tables of the current network namespace (ctnetlink), like
        "conntrack -F".
    faults.py ping-gaps PINGLOG START_EPOCH
        Reads "ping -D" output: prints "replies N max_gap S first_after S last_before S" (max_gap: longest
        time between consecutive replies; first_after: from START_EPOCH to the first reply after it;
        last_before: the last reply before it, seconds before START_EPOCH).
"""

import hashlib
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


def ctrl(ctrl_port, command):
    answer = fgnet.ask(ctrl_port, command, timeout=3)
    print(answer.decode())
    return not answer.startswith(b"error")


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
# Traffic with a verifiable content
# ---------------------------------------------------------------------------------------------------------

def receive_chunk(conn):
    """The next bytes of a stream (empty at its end)."""
    return conn.recv(1 << 16)


def tcp_recv(addr, port, ready, seconds):
    listener = socket.socket(fgnet.family_of(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(1)
    listener.settimeout(seconds)
    fgnet.signal_ready(ready)
    deadline = fgnet.deadline_after(seconds)
    digest = hashlib.sha256()
    total = 0
    ended = False
    try:
        conn, _ = listener.accept()
        for chunk in fgnet.receive_until(conn, deadline, receive_chunk):
            if not chunk:
                ended = True
                break
            digest.update(chunk)
            total += len(chunk)
        if not ended:
            sys.stderr.write("tcp-recv: timed out after %d bytes\n" % total)
    except OSError as err:
        sys.stderr.write("tcp-recv: %s after %d bytes\n" % (err, total))
    print("%d %s" % (total, digest.hexdigest()))


def tcp_send(addr, port, size, connected, go):
    """Connects, says so (CONNECTED file), waits for the GO file, then sends; the time runs from the first
    byte until the receiver has closed (everything was read)."""
    rng = random.Random(os.urandom(16))
    digest = hashlib.sha256()
    sock = socket.create_connection((addr, port), timeout=60)
    fgnet.signal_ready(connected)
    fgnet.wait_until(lambda: os.path.exists(go), 15, 0.01)
    start = time.monotonic()
    sent = 0
    try:
        while sent < size:
            chunk = rng.randbytes(min(1 << 16, size - sent))
            sock.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    except OSError as err:
        sys.stderr.write("tcp-send: %s after %d bytes\n" % (err, sent))
        return
    print("%d %s %.2f" % (sent, digest.hexdigest(), time.monotonic() - start))


def udp_payload(number, size):
    """Datagram NUMBER of a burst: "seq N", then (when SIZE leaves room) a space and bytes derived from N,
    so that the receiver can tell an intact datagram from a damaged one."""
    head = b"seq %d" % number
    if size <= len(head) + 1:
        return head
    filler = hashlib.sha256(head).digest() * (size // 32 + 1)
    return head + b" " + filler[: size - len(head) - 1]


def udp_recv(addr, port, ready, seconds):
    sock = fgnet.udp_socket(addr, port, rcvbuf=4 << 20)
    fgnet.signal_ready(ready)
    seen = set()
    received = corrupt = 0
    for data, _ in fgnet.receive_until(sock, fgnet.deadline_after(seconds)):
        match = re.match(rb"seq (\d+)", data)
        if not match:
            continue
        number = int(match.group(1))
        if data != udp_payload(number, len(data)):
            corrupt += 1
            continue
        received += 1
        seen.add(number)
    print("received %d unique %d duplicates %d corrupt %d" % (received, len(seen), received - len(seen), corrupt))


def udp_send(addr, port, count, size):
    sock = fgnet.udp_socket(addr)
    for number in range(count):
        sock.sendto(udp_payload(number, size), (addr, port))
        time.sleep(0.001)


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
    "ctrl": (ctrl, (int, str)),
    "sniff": (sniff, (str, str, str, str, float)),
    "intervals": (intervals, (str, int, int)),
    "tcp-recv": (tcp_recv, (str, int, str, float)),
    "tcp-send": (tcp_send, (str, int, int, str, str)),
    "udp-recv": (udp_recv, (str, int, str, float)),
    "udp-send": (udp_send, (str, int, int, int)),
    "ct-flush": (ct_flush, ()),
    "ping-gaps": (ping_gaps, (str, float)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
