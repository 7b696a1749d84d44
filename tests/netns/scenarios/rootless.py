"""Helpers of the rootless scenario (standard library only).

  dns-serve ADDR PORT ANSWER4 READY
        A DNS responder: A queries for names ending in ".test" are answered with ANSWER4, anything else
        with NXDOMAIN. Runs until killed.
  dns-query ADDR PORT NAME TIMEOUT
        Sends one A query for NAME from a fresh socket; prints the first address of the answer; exit 1 if
        none came within TIMEOUT seconds.
  sink-serve ADDR PORT READY
        A TCP server (backlog 1024, a thread per connection): reads until EOF, answers with the sha256 of
        what it read (hex), closes. Runs until killed.
  sink-send ADDR PORT NBYTES
        Sends NBYTES random bytes to a sink, reads its answer; exit 1 unless it is their sha256.
  concurrent ADDR PORT COUNT NBYTES
        COUNT connections opened at once, then each does a sink-send exchange of NBYTES; prints how many
        succeeded; exit 1 unless all did (within 60 s).
  hold-and-probe HOLD_ADDR HOLD_PORT COUNT EXCHANGE PROBE_ADDR PROBE_PORT
        Opens COUNT connections to HOLD_ADDR:HOLD_PORT and keeps them open (sending nothing); then a probe
        connection to PROBE_ADDR:PROBE_PORT must be refused (up to 10 held ones are opened 0.2 s apart, so
        that they pass through their set-up one at a time) (closed or reset without an answer); if
        EXCHANGE is 1, one held connection must then still complete a sink exchange; then everything is
        closed and, after a second, a new probe must be served. Prints each step; exit 1 if one failed.
  socks-udp PROXY_ADDR PROXY_PORT TARGET TPORT COUNT IDLE
        SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) through the proxy, then COUNT DNS A queries (ids 0..COUNT-1,
        names nI.test) sent through the relay to TARGET:TPORT (an address, or a name the proxy resolves); each
        must be answered with its id, from the resolver's address (192.168.241.2:53) in the header (missing
        ones are resent up to 3 times). Then a datagram with FRAG 1 must go unanswered. If IDLE > 0: nothing
        is sent for IDLE seconds, and the proxy must have closed the control connection (UdpIdleTimeout).
        Else the control connection is closed, and a query to the relay must go unanswered (the association
        ended with it). Prints each step; exit 1 if one failed.
  socks-udp-refused PROXY_ADDR PROXY_PORT
        A UDP ASSOCIATE must be answered with reply 1 (general failure: what a reached limit answers, where a
        proxy without UDP ASSOCIATE would answer 7); prints it.
  The measurements of scripts/bench-rootless.sh:
  bench-serve ADDR PORT READY
        A TCP server (a thread per connection): a connection starts with "U" or "D" and an 8-byte count N;
        for "U" it reads N bytes and answers "ok", for "D" it sends N bytes; for "E" it echoes every byte.
  transfer VIA ADDR PORT DIRECTION NBYTES
        One bench-serve transfer ("up" or "down") of NBYTES, directly (VIA "direct") or through a SOCKS5
        proxy (VIA "socks5:HOST:PORT"); prints Mbit/s.
  rtt VIA ADDR PORT COUNT
        COUNT one-byte round trips on one bench-serve echo connection; prints the median in microseconds.
"""
import errno
import hashlib
import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # the suite runs as root: leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fgnet  # noqa: E402 (tests/netns/fgnet.py, found through the path set just above)


# ----- DNS ------------------------------------------------------------------------------------------------

def dns_name(packet, offset):
    """(name, offset after it) of the uncompressed name at offset."""
    labels = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length


def dns_answer(query, answer4):
    """The response to one query datagram, or None if it is not one we answer."""
    if len(query) < 12:
        return None
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        return None
    name, end = dns_name(query, 12)
    qtype, _qclass = struct.unpack("!HH", query[end:end + 4])
    question = query[12:end + 4]
    if not name.endswith(".test"):
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(answer4)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


def dns_serve(addr, port, answer4, ready):
    sock = fgnet.udp_socket(addr, port)
    fgnet.signal_ready(ready)
    while True:
        query, source = sock.recvfrom(fgnet.MAX_DATAGRAM)
        try:
            response = dns_answer(query, answer4)
        except (IndexError, struct.error, UnicodeError):
            response = None
        if response:
            sock.sendto(response, source)


def dns_query(addr, port, name, timeout):
    sock = fgnet.udp_socket(addr)
    sock.settimeout(timeout)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    sock.sendto(query, (addr, port))
    try:
        response = sock.recv(fgnet.MAX_DATAGRAM)
    except socket.timeout:
        print("no answer")
        return False
    ident, _flags, _qd, ancount = struct.unpack("!HHHH", response[:8])
    if ident != 0x4242 or ancount < 1:
        print("bad answer")
        return False
    print(socket.inet_ntoa(response[-4:]))
    return True


# ----- TCP sink -------------------------------------------------------------------------------------------

def sink_connection(conn):
    digest = hashlib.sha256()
    with conn:
        conn.settimeout(120)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                digest.update(chunk)
            conn.sendall(digest.hexdigest().encode())
        except OSError:
            pass


def serve_threaded(addr, port, ready, handle):
    """Accepts connections on addr:port (backlog 1024) until killed, each handled on a thread of its own."""
    server = socket.socket(fgnet.family_of(addr), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((addr, port))
    server.listen(1024)
    fgnet.signal_ready(ready)
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def sink_serve(addr, port, ready):
    serve_threaded(addr, port, ready, sink_connection)


def exchange(sock, nbytes):
    """One sink exchange on a connected socket: True if the answer is the sha256 of what was sent."""
    data = os.urandom(nbytes)
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = sock.recv(128)
            if not chunk:
                break
            answer += chunk
    except OSError:
        return False
    return answer.decode(errors="replace") == hashlib.sha256(data).hexdigest()


def connect(addr, port, timeout=30):
    return socket.create_connection((addr, port), timeout=timeout)


def sink_send(addr, port, nbytes):
    with connect(addr, port) as sock:
        ok = exchange(sock, nbytes)
    print("ok" if ok else "mismatch")
    return ok


def concurrent(addr, port, count, nbytes):
    results = []
    sockets = []
    for _ in range(count):
        sockets.append(connect(addr, port, timeout=60))

    def run(sock):
        with sock:
            results.append(exchange(sock, nbytes))

    threads = [threading.Thread(target=run, args=(s,)) for s in sockets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    succeeded = sum(1 for r in results if r)
    print(succeeded)
    return succeeded == count


def refused(addr, port):
    """True if a new connection is closed or reset without any answer."""
    try:
        with connect(addr, port, timeout=5) as sock:
            sock.settimeout(5)
            try:
                sock.sendall(b"probe")
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(128) == b""
            except (ConnectionResetError, BrokenPipeError):
                return True
            except OSError as e:
                # Reset before our shutdown(): the socket is no longer connected.
                if e.errno == errno.ENOTCONN:
                    return True
                raise
    except ConnectionRefusedError:
        return True
    except socket.timeout:
        return False


def hold_and_probe(hold_addr, hold_port, count, do_exchange, probe_addr, probe_port):
    held = []
    for _ in range(count):
        held.append(connect(hold_addr, hold_port))
        if count <= 10:
            time.sleep(0.2)  # one at a time through set-up, so that MaxHalfOpen does not refuse them
    time.sleep(1)  # the mode accepts them (they count from then on)
    ok = True
    first = refused(probe_addr, probe_port)
    print("probe while held: %s" % ("refused" if first else "SERVED"))
    ok &= first
    if do_exchange:
        served = exchange(held[0], 1000)
        print("held connection exchange: %s" % ("ok" if served else "FAILED"))
        ok &= served
    for sock in held:
        sock.close()
    time.sleep(1)
    with connect(probe_addr, probe_port) as sock:
        after = exchange(sock, 1000)
    print("probe after release: %s" % ("served" if after else "FAILED"))
    return ok and after


# ----- SOCKS5 UDP ASSOCIATE -------------------------------------------------------------------------------

def dns_query_packet(ident, name):
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def socks_udp_associate(proxy_addr, proxy_port):
    """(control connection, reply code, relay address) of a UDP ASSOCIATE request."""
    control = connect(proxy_addr, proxy_port, timeout=10)
    control.sendall(b"\x05\x01\x00")
    if recv_exact(control, 2) != b"\x05\x00":
        raise ConnectionError("SOCKS5 method refused")
    control.sendall(b"\x05\x03\x00\x01" + bytes(6))
    head = recv_exact(control, 4)
    length = {1: 4, 4: 16}.get(head[3], 0)
    rest = recv_exact(control, length + 2) if length else b""
    relay = None
    if head[1] == 0 and length:
        family = socket.AF_INET if head[3] == 1 else socket.AF_INET6
        relay = (socket.inet_ntop(family, rest[:length]), struct.unpack("!H", rest[length:])[0])
    return control, head[1], relay


def socks_udp_header(target, port, frag=0):
    try:
        packed = b"\x01" + socket.inet_aton(target)
    except OSError:
        packed = b"\x03" + bytes([len(target)]) + target.encode()
    return b"\x00\x00" + bytes([frag]) + packed + struct.pack("!H", port)


def socks_udp_answers(sock, wait, want=None):
    """{dns id: (source, answered address)} of the relay's datagrams arriving within wait seconds (or until
    every id of want has arrived)."""
    answers = {}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not (want and want <= answers.keys()):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            datagram = sock.recv(fgnet.MAX_DATAGRAM)
        except socket.timeout:
            break
        if datagram[:4] != b"\x00\x00\x00\x01" or len(datagram) < 10 + 12:
            print("malformed relay datagram: %r" % datagram[:16])
            continue
        source = "%s:%d" % (socket.inet_ntoa(datagram[4:8]), struct.unpack("!H", datagram[8:10])[0])
        payload = datagram[10:]
        (ident,) = struct.unpack("!H", payload[:2])
        answers[ident] = (source, socket.inet_ntoa(payload[-4:]))
    return answers


def socks_udp(proxy_addr, proxy_port, target, tport, count, idle):
    control, code, relay = socks_udp_associate(proxy_addr, proxy_port)
    print("UDP ASSOCIATE: reply %d, relay %s" % (code, relay))
    if code != 0 or relay is None:
        return False
    sock = fgnet.udp_socket(proxy_addr)
    header = socks_udp_header(target, tport)
    answers = {}
    for _attempt in range(4):
        missing = [i for i in range(count) if i not in answers]
        if not missing:
            break
        for ident in missing:
            sock.sendto(header + dns_query_packet(ident, "n%d.test" % ident), relay)
        answers.update(socks_udp_answers(sock, 2, set(missing)))
    good = [i for i in range(count) if answers.get(i) == ("192.168.241.2:53", "192.168.241.2")]
    print("answered %d of %d (%s)" % (len(good), count, sorted(set(answers.values()))))
    ok = len(good) == count
    sock.sendto(socks_udp_header(target, tport, frag=1) + dns_query_packet(60000, "frag.test"), relay)
    fragment_answered = 60000 in socks_udp_answers(sock, 1)
    print("fragment: %s" % ("ANSWERED" if fragment_answered else "dropped"))
    ok &= not fragment_answered
    if idle > 0:
        # One more answered query, so that the idle time is counted from now.
        sock.sendto(header + dns_query_packet(60002, "last.test"), relay)
        fresh = 60002 in socks_udp_answers(sock, 1, {60002})
        control.settimeout(idle + 3)
        start = time.monotonic()
        try:
            closed = control.recv(16) == b""
        except (socket.timeout, ConnectionResetError):
            closed = False
        waited = time.monotonic() - start
        print("idle: control connection %s after %.1f s" % ("closed" if closed else "OPEN", waited))
        ok &= fresh and closed and waited >= idle - 0.5
    else:
        control.close()
        time.sleep(0.5)
        sock.sendto(header + dns_query_packet(60001, "after.test"), relay)
        after = 60001 in socks_udp_answers(sock, 1)
        print("after the control connection closed: %s" % ("ANSWERED" if after else "no answer"))
        ok &= not after
    return ok


def socks_udp_refused(proxy_addr, proxy_port):
    control, code, _relay = socks_udp_associate(proxy_addr, proxy_port)
    control.close()
    print("UDP ASSOCIATE: reply %d" % code)
    return code == 1


# ----- measurements (scripts/bench-rootless.sh) -----------------------------------------------------------

CHUNK = bytes(1 << 20)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def bench_connection(conn):
    with conn:
        try:
            kind = recv_exact(conn, 1)
            if kind == b"E":
                while True:
                    byte = conn.recv(1)
                    if not byte:
                        return
                    conn.sendall(byte)
            (count,) = struct.unpack("!Q", recv_exact(conn, 8))
            if kind == b"U":
                left = count
                while left > 0:
                    chunk = conn.recv(min(left, 1 << 20))
                    if not chunk:
                        return
                    left -= len(chunk)
                conn.sendall(b"ok")
            elif kind == b"D":
                left = count
                while left > 0:
                    n = min(left, len(CHUNK))
                    conn.sendall(CHUNK[:n])
                    left -= n
        except OSError:
            pass


def bench_serve(addr, port, ready):
    serve_threaded(addr, port, ready, bench_connection)


def open_via(via, addr, port):
    """A connection to addr:port, directly or through a SOCKS5 proxy (no authentication)."""
    if via == "direct":
        sock = connect(addr, port, timeout=60)
    else:
        _, proxy_host, proxy_port = via.split(":")
        sock = connect(proxy_host, int(proxy_port), timeout=60)
        sock.sendall(b"\x05\x01\x00")
        if recv_exact(sock, 2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 method refused")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(addr) + struct.pack("!H", port))
        reply = recv_exact(sock, 10)
        if reply[1] != 0:
            raise ConnectionError("SOCKS5 CONNECT failed: %d" % reply[1])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def transfer(via, addr, port, direction, nbytes):
    with open_via(via, addr, port) as sock:
        start = time.monotonic()
        if direction == "up":
            sock.sendall(b"U" + struct.pack("!Q", nbytes))
            left = nbytes
            while left > 0:
                n = min(left, len(CHUNK))
                sock.sendall(CHUNK[:n])
                left -= n
            recv_exact(sock, 2)
        else:
            sock.sendall(b"D" + struct.pack("!Q", nbytes))
            left = nbytes
            while left > 0:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed early")
                left -= len(chunk)
        elapsed = time.monotonic() - start
    print("%.1f" % (nbytes * 8 / elapsed / 1e6))


def rtt(via, addr, port, count):
    with open_via(via, addr, port) as sock:
        sock.sendall(b"E")
        samples = []
        for _ in range(count):
            start = time.monotonic()
            sock.sendall(b"x")
            recv_exact(sock, 1)
            samples.append(time.monotonic() - start)
    samples.sort()
    print("%.0f" % (samples[len(samples) // 2] * 1e6))


COMMANDS = {
    "dns-serve": (dns_serve, (str, int, str, str)),
    "dns-query": (dns_query, (str, int, str, float)),
    "sink-serve": (sink_serve, (str, int, str)),
    "sink-send": (sink_send, (str, int, int)),
    "concurrent": (concurrent, (str, int, int, int)),
    "hold-and-probe": (hold_and_probe, (str, int, int, fgnet.flag, str, int)),
    "socks-udp": (socks_udp, (str, int, str, int, int, float)),
    "socks-udp-refused": (socks_udp_refused, (str, int)),
    "bench-serve": (bench_serve, (str, int, str)),
    "transfer": (transfer, (str, str, int, str, int)),
    "rtt": (rtt, (str, str, int, int)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
