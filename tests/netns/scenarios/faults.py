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
        Counts datagrams carrying "seq N" for SECONDS; prints "received R unique U duplicates D".
    faults.py udp-send ADDR PORT COUNT
        Sends COUNT datagrams "seq 0" .. "seq COUNT-1", paced (1 per ms).
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
import select
import socket
import struct
import sys
import time

LOCALHOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------------------
# The relay
# ---------------------------------------------------------------------------------------------------------

# A reorder window is released after this long even when not full, so that a handshake or a lone ping
# is not held forever (seconds).
REORDER_FLUSH_AFTER = 0.02


class Relay:
    """Forwards datagrams between two ports, with optional reordering, duplication and delay."""

    def __init__(self, listen, a_port, b_port, ctrl_port):
        self.main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.main.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.main.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.main.bind((LOCALHOST, listen))
        self.ctrl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ctrl.bind((LOCALHOST, ctrl_port))
        self.partner = {a_port: b_port, b_port: a_port}
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
            self.main.sendto(data, (LOCALHOST, dst))
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

    def receive(self, data, dst):
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

    def serve(self, ready):
        open(ready, "w").close()
        while True:
            deadline = self.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.main, self.ctrl], [], [], timeout)
            if self.ctrl in readable:
                text, source = self.ctrl.recvfrom(256)
                self.ctrl.sendto(self.command(text.decode(errors="replace")).encode(), source)
            if self.main in readable:
                # Drain what is queued (bounded, so that timers still run under a flood).
                for _ in range(256):
                    try:
                        data, (host, port) = self.main.recvfrom(65535, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    if host == LOCALHOST and port in self.partner:
                        self.receive(data, self.partner[port])
            self.run_timers()


def ctrl(ctrl_port, command):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(command.encode(), (LOCALHOST, ctrl_port))
    answer, _ = sock.recvfrom(65535)
    print(answer.decode())
    return not answer.startswith(b"error")


# ---------------------------------------------------------------------------------------------------------
# Handshake timestamps
# ---------------------------------------------------------------------------------------------------------

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35


def sniff(iface, ports, outfile, ready, seconds):
    wanted = {int(p) for p in ports.split(",")}
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((iface, 0))
    deadline = time.monotonic() + seconds
    with open(outfile, "w") as out:
        open(ready, "w").close()
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                continue
            packet, ancillary, _, address = sock.recvmsg(128, socket.CMSG_SPACE(16))
            # On loopback every packet is seen twice (leaving and arriving): keep the outgoing copy.
            if address[2] != PACKET_OUTGOING or len(packet) < 29 or packet[0] >> 4 != 4 or packet[9] != 17:
                continue
            header = (packet[0] & 0x0F) * 4
            if len(packet) < header + 9:
                continue
            sport, dport = struct.unpack_from("!HH", packet, header)
            kind = packet[header + 8]
            if sport not in wanted or dport not in wanted or kind not in (1, 2, 3):
                continue
            stamp = time.time()
            for level, ctype, data in ancillary:
                if level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS and len(data) >= 16:
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

def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_recv(addr, port, ready, seconds):
    listener = socket.socket(family_of(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(1)
    listener.settimeout(seconds)
    open(ready, "w").close()
    deadline = time.monotonic() + seconds
    digest = hashlib.sha256()
    total = 0
    try:
        conn, _ = listener.accept()
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
    except (socket.timeout, OSError) as err:
        sys.stderr.write("tcp-recv: %s after %d bytes\n" % (err, total))
    print("%d %s" % (total, digest.hexdigest()))


def tcp_send(addr, port, size, connected, go):
    """Connects, says so (CONNECTED file), waits for the GO file, then sends; the time runs from the first
    byte until the receiver has closed (everything was read)."""
    rng = random.Random(os.urandom(16))
    digest = hashlib.sha256()
    sock = socket.create_connection((addr, port), timeout=60)
    open(connected, "w").close()
    deadline = time.monotonic() + 15
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
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


def udp_recv(addr, port, ready, seconds):
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((addr, port))
    open(ready, "w").close()
    seen = set()
    received = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            break
        match = re.fullmatch(rb"seq (\d+)", data)
        if match:
            received += 1
            seen.add(int(match.group(1)))
    print("received %d unique %d duplicates %d" % (received, len(seen), received - len(seen)))


def udp_send(addr, port, count):
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    for number in range(count):
        sock.sendto(b"seq %d" % number, (addr, port))
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


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "relay":
        Relay(int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])).serve(argv[6])
    elif command == "ctrl":
        return 0 if ctrl(int(argv[2]), argv[3]) else 1
    elif command == "sniff":
        sniff(argv[2], argv[3], argv[4], argv[5], float(argv[6]))
    elif command == "intervals":
        intervals(argv[2], int(argv[3]), int(argv[4]))
    elif command == "tcp-recv":
        tcp_recv(argv[2], int(argv[3]), argv[4], float(argv[5]))
    elif command == "tcp-send":
        tcp_send(argv[2], int(argv[3]), int(argv[4]), argv[5], argv[6])
    elif command == "udp-recv":
        udp_recv(argv[2], int(argv[3]), argv[4], float(argv[5]))
    elif command == "udp-send":
        udp_send(argv[2], int(argv[3]), int(argv[4]))
    elif command == "ct-flush":
        return 0 if ct_flush() else 1
    elif command == "ping-gaps":
        ping_gaps(argv[2], float(argv[3]))
    else:
        sys.stderr.write("unknown command %r\n" % command)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
