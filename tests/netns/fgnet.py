#!/usr/bin/env python3
"""Shared Python helpers of the network-namespace test suite (python3 standard library only).

The scenario helpers (scenarios/*.py) import this module; lib.sh runs it as a command for the suite-wide
probes (neither ncat nor socat nor tcpdump is installed):

    fgnet.py udp-listen ADDR PORT SECONDS READYFILE FIRST
        Counts the datagrams arriving on ADDR:PORT for SECONDS (or until the first one if FIRST is 1);
        prints the count, one stderr line a datagram.
    fgnet.py udp-send ADDR PORT PAYLOAD
        Sends one datagram.
    fgnet.py udp-hold ADDR PORT READYFILE
        Keeps ADDR:PORT bound until killed.
    fgnet.py stale-socket PATH
        Leaves a UNIX socket file behind that nobody serves.
    fgnet.py connectable PATH
        Exit 0 if something accepts connections on the UNIX socket PATH (1 s at most), else 1.
    fgnet.py iperf-summary JSONFILE
        Prints the throughput of an iperf3 -J run (TCP: received; UDP: with the loss); exit 1 if there is
        none, the run failed or nothing got through.
    fgnet.py json-field KEY...
        Prints the value at KEY/KEY/... of the JSON object read from stdin.
    fgnet.py tcp-recv ADDR PORT READYFILE SECONDS
        Accepts one TCP connection, reads it to the end; prints "BYTES SHA256".
    fgnet.py tcp-send ADDR PORT BYTES CONNECTEDFILE GOFILE
        Connects, creates CONNECTEDFILE, waits (up to 15 s) for GOFILE, sends BYTES pseudo-random bytes and
        waits for the receiver to close; prints "BYTES SHA256 SECONDS" (from the first byte to the close).
    fgnet.py udp-recv ADDR PORT READYFILE SECONDS
        Counts datagrams carrying "seq N" for SECONDS; prints "received R unique U duplicates D corrupt C"
        (corrupt: a datagram "seq N" whose bytes are not those udp-burst gave datagram N; not counted in R).
    fgnet.py udp-recv-all ADDR PORT READYFILE SECONDS COUNT
        The same, but ends as soon as datagrams 0 .. COUNT-1 have all arrived intact (for a check that does not
        look for duplicates: it saves the rest of the window when nothing is lost).
    fgnet.py udp-burst ADDR PORT COUNT SIZE
        Sends COUNT datagrams "seq 0" .. "seq COUNT-1", paced (1 per ms); with SIZE > 0 each is filled up
        to SIZE bytes with bytes derived from its number.

READYFILE arguments: the file is created once the socket is bound, so that the shell can wait for it
(lib.sh's wait_ready_file) instead of sleeping.
"""

import hashlib
import json
import os
import random
import re
import select
import socket
import sys
import time

LOCALHOST = "127.0.0.1"
# Large enough for any UDP datagram.
MAX_DATAGRAM = 65535


# ---------------------------------------------------------------------------------------------------------
# Sockets and readiness
# ---------------------------------------------------------------------------------------------------------

def family_of(addr):
    """AF_INET6 for an IPv6 address (it has a colon), else AF_INET."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp_socket(addr, port=None, rcvbuf=None, sndbuf=None):
    """A UDP socket of addr's family, with the given buffer sizes, bound to (addr, port) if port is given."""
    sock = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if port is not None:
        sock.bind((addr, port))
    return sock


def unix_connect(path, timeout=None):
    """A stream socket connected to the UNIX socket path (OSError if nobody accepts)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def signal_ready(path):
    """Creates the (empty) ready file a shell helper waits for."""
    open(path, "w").close()


# ---------------------------------------------------------------------------------------------------------
# Deadlines
# ---------------------------------------------------------------------------------------------------------

def deadline_after(seconds):
    """The time.monotonic() value `seconds` from now."""
    return time.monotonic() + seconds


def wait_until(condition, seconds, interval):
    """Polls condition() every `interval` seconds until it holds (True) or `seconds` have passed (False)."""
    deadline = deadline_after(seconds)
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def recv_datagram(sock):
    """(data, source) of the next datagram: the default `receive` of receive_until."""
    return sock.recvfrom(MAX_DATAGRAM)


def receive_until(sock, deadline, receive=recv_datagram):
    """Yields receive(sock) (by default (data, source) of each datagram) until the monotonic deadline.

    The socket's timeout is set to the time left before each call, so the generator ends at the deadline
    at the latest; stopping early is up to the caller (break). Errors other than the timeout propagate."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            item = receive(sock)
        except socket.timeout:
            return
        yield item


# ---------------------------------------------------------------------------------------------------------
# UDP control requests and relays between two local daemons
# ---------------------------------------------------------------------------------------------------------

def ask(port, command, timeout):
    """Sends command to 127.0.0.1:port from a fresh socket and returns the answer (socket.timeout if none
    comes within `timeout` seconds)."""
    with udp_socket(LOCALHOST) as sock:
        sock.settimeout(timeout)
        sock.sendto(command.encode(), (LOCALHOST, port))
        answer, _ = sock.recvfrom(MAX_DATAGRAM)
    return answer


def relay_ctrl(ctrl_port, command):
    """Sends one command to a PortPairRelay's control port and prints its answer; False if the answer is an
    error ("error ...")."""
    answer = ask(ctrl_port, command, timeout=3)
    print(answer.decode())
    return not answer.startswith(b"error")


class PortPairRelay:
    """A UDP relay on 127.0.0.1:listen between the daemons on 127.0.0.1:a_port and 127.0.0.1:b_port, steered
    through a control socket on 127.0.0.1:ctrl_port.

    Subclasses say what happens to a datagram (datagram), answer commands (command) and may run timers
    (next_deadline, run_timers). Datagrams from anyone but the two daemons are ignored."""

    # Datagrams read per wake-up (bounded, so that commands and timers still run under a flood).
    batch = 1

    def __init__(self, listen, a_port, b_port, ctrl_port, buffer_bytes=None):
        self.sock = udp_socket(LOCALHOST, listen, rcvbuf=buffer_bytes, sndbuf=buffer_bytes)
        self.ctrl = udp_socket(LOCALHOST, ctrl_port)
        self.partner = {a_port: b_port, b_port: a_port}

    def send(self, data, port):
        """Sends data from the relay's address to 127.0.0.1:port."""
        self.sock.sendto(data, (LOCALHOST, port))

    def command(self, text):
        """The answer to a control command."""
        raise NotImplementedError

    def datagram(self, data, src_port, dst_port):
        """Handles a datagram from the daemon on src_port, meant for the one on dst_port."""
        raise NotImplementedError

    def next_deadline(self):
        """When run_timers wants to run next (time.monotonic()), or None."""
        return None

    def run_timers(self):
        """Called after every wake-up."""

    def serve(self, ready):
        """Signals ready, then relays forever."""
        signal_ready(ready)
        while True:
            deadline = self.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock, self.ctrl], [], [], timeout)
            if self.ctrl in readable:
                text, source = self.ctrl.recvfrom(256)
                self.ctrl.sendto(self.command(text.decode(errors="replace")).encode(), source)
            if self.sock in readable:
                for _ in range(self.batch):
                    try:
                        data, (host, port) = self.sock.recvfrom(MAX_DATAGRAM, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    if host == LOCALHOST and port in self.partner:
                        self.datagram(data, port, self.partner[port])
            self.run_timers()


# ---------------------------------------------------------------------------------------------------------
# Sniffing (AF_PACKET)
# ---------------------------------------------------------------------------------------------------------

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35


def packet_socket(iface, protocol, rcvbuf=None, timestamps=False):
    """An AF_PACKET socket (network-layer packets, no link header) on iface for the ethertype protocol;
    with timestamps, each packet carries its kernel receive time (SO_TIMESTAMPNS ancillary data)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(protocol))
    if timestamps:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((iface, 0))
    return sock


def ipv4_udp(packet):
    """(source port, destination port, payload) of an IPv4 packet carrying UDP, or None for anything else
    (or a packet too short for the IP and UDP headers)."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    header = (packet[0] & 0x0F) * 4
    if len(packet) < header + 8:
        return None
    sport = int.from_bytes(packet[header:header + 2], "big")
    dport = int.from_bytes(packet[header + 2:header + 4], "big")
    return sport, dport, packet[header + 8:]


# ---------------------------------------------------------------------------------------------------------
# Traffic with a verifiable content
# ---------------------------------------------------------------------------------------------------------

def receive_chunk(conn):
    """The next bytes of a stream (empty at its end)."""
    return conn.recv(1 << 16)


def tcp_recv(addr, port, ready, seconds):
    listener = socket.socket(family_of(addr), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((addr, port))
    listener.listen(1)
    listener.settimeout(seconds)
    signal_ready(ready)
    deadline = deadline_after(seconds)
    digest = hashlib.sha256()
    total = 0
    ended = False
    try:
        conn, _ = listener.accept()
        for chunk in receive_until(conn, deadline, receive_chunk):
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
    signal_ready(connected)
    wait_until(lambda: os.path.exists(go), 15, 0.01)
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


def udp_recv(addr, port, ready, seconds, count=None):
    """Counts the numbered datagrams of udp_burst for `seconds` (or, given count, until all of 0 .. count-1
    arrived intact); prints the summary line."""
    sock = udp_socket(addr, port, rcvbuf=4 << 20)
    signal_ready(ready)
    seen = set()
    received = corrupt = 0
    for data, _ in receive_until(sock, deadline_after(seconds)):
        match = re.match(rb"seq (\d+)", data)
        if not match:
            continue
        number = int(match.group(1))
        if data != udp_payload(number, len(data)):
            corrupt += 1
            continue
        received += 1
        seen.add(number)
        if count is not None and len(seen) == count and max(seen) == count - 1:
            break
    print("received %d unique %d duplicates %d corrupt %d" % (received, len(seen), received - len(seen), corrupt))


def udp_burst(addr, port, count, size):
    sock = udp_socket(addr)
    for number in range(count):
        sock.sendto(udp_payload(number, size), (addr, port))
        time.sleep(0.001)


# ---------------------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------------------

def flag(text):
    """A "0"/"1" command-line argument as a bool."""
    return text == "1"


def run_command(argv, commands):
    """Runs the command argv[1] with the arguments argv[2:]; returns the exit status.

    commands maps a name to (function, converters): one converter (int, float, str, flag) per argument, or
    None to hand the function all the arguments as one list. The status is 1 if the function returns False,
    else 0; 2 (with a line on stderr) for an unknown command or a wrong number of arguments."""
    prog = os.path.basename(argv[0])
    name, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if name not in commands:
        sys.stderr.write("%s: unknown command %r (known: %s)\n" % (prog, name, " ".join(sorted(commands))))
        return 2
    function, converters = commands[name]
    if converters is None:
        result = function(args)
    elif len(args) != len(converters):
        sys.stderr.write("%s %s: %d arguments expected, %d given\n" % (prog, name, len(converters), len(args)))
        return 2
    else:
        result = function(*(convert(arg) for convert, arg in zip(converters, args)))
    return 1 if result is False else 0


# ---------------------------------------------------------------------------------------------------------
# The suite-wide probes (lib.sh)
# ---------------------------------------------------------------------------------------------------------

def udp_listen(addr, port, seconds, ready, first):
    """Counts datagrams for `seconds` (or until the first one); prints the count."""
    sock = udp_socket(addr, port)
    signal_ready(ready)
    count = 0
    for data, source in receive_until(sock, deadline_after(seconds)):
        count += 1
        sys.stderr.write("datagram %d from %s: %r\n" % (count, source, data[:16]))
        if first:
            break
    print(count)


def udp_send(addr, port, payload):
    """Sends one datagram carrying the text payload."""
    with udp_socket(addr) as sock:
        sock.sendto(payload.encode(), (addr, port))


def udp_hold(addr, port, ready):
    """Keeps addr:port bound until killed."""
    with udp_socket(addr, port):
        signal_ready(ready)
        time.sleep(3600)


def stale_socket(path):
    """Binds a UNIX socket at path and closes it: the file stays, nobody serves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)


def connectable(path):
    """True if something accepts connections on the UNIX socket path (within 1 s)."""
    try:
        unix_connect(path, timeout=1).close()
    except OSError:
        return False
    return True


def iperf_summary(path):
    """Prints the throughput of an iperf3 JSON file; True if it shows traffic getting through."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        print("unreadable iperf3 output: %s" % err)
        return False
    if data.get("error"):
        print("iperf3 error: %s" % data["error"])
        return False
    end = data.get("end", {})
    udp = data.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
    summary = end.get("sum") if udp else end.get("sum_received")
    if not summary:
        print("no summary in iperf3 output")
        return False
    bps = summary.get("bits_per_second", 0)
    if udp:
        lost = summary.get("lost_percent", 100)
        print("%.1f Mbit/s, %.1f%% lost" % (bps / 1e6, lost))
        return bps > 0 and lost < 100
    print("%.1f Mbit/s" % (bps / 1e6))
    return bps > 0


def json_field(keys):
    """Prints the value at keys[0]/keys[1]/... of the JSON object on stdin."""
    value = json.load(sys.stdin)
    for key in keys:
        value = value[key]
    print(value)


COMMANDS = {
    "udp-listen": (udp_listen, (str, int, float, str, flag)),
    "udp-send": (udp_send, (str, int, str)),
    "udp-hold": (udp_hold, (str, int, str)),
    "stale-socket": (stale_socket, (str,)),
    "connectable": (connectable, (str,)),
    "iperf-summary": (iperf_summary, (str,)),
    "json-field": (json_field, None),
    "relay-ctrl": (relay_ctrl, (int, str)),
    "tcp-recv": (tcp_recv, (str, int, str, float)),
    "tcp-send": (tcp_send, (str, int, int, str, str)),
    "udp-recv": (udp_recv, (str, int, str, float)),
    "udp-recv-all": (udp_recv, (str, int, str, float, int)),
    "udp-burst": (udp_burst, (str, int, int, int)),
}

if __name__ == "__main__":
    sys.exit(run_command(sys.argv, COMMANDS))
