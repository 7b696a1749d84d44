#!/usr/bin/env python3
"""Helpers of the `hostile` scenario (python3 standard library only).

    hostile.py relay LISTEN A_PORT B_PORT CTRL_PORT CAPTURE READYFILE
        A UDP relay on 127.0.0.1:LISTEN between the daemons listening on 127.0.0.1:A_PORT and
        127.0.0.1:B_PORT. Every datagram is appended to CAPTURE as "mode src_port dst_port hex".
        Commands on 127.0.0.1:CTRL_PORT (answered "ok"): "hold" (keep datagrams instead of forwarding
        them: a fresh, never-delivered datagram is what a forgery must not beat), "pass" (forward again),
        "release" (forward the held datagrams now, from the relay's own address); sent with
        "fgnet.py relay-ctrl CTRL_PORT COMMAND".
    hostile.py attack CAPTURE TARGET_PORT SOURCE_ADDR TARGET_PUBLIC_KEY_HEX
        Sends the junk corpus built from the datagrams captured towards TARGET_PORT to 127.0.0.1:TARGET_PORT
        from SOURCE_ADDR (any port), then listens 1 s for answers. Prints "sent N answers M kinds K ...".
    hostile.py uapi-names
        The names of the malformed-request cases, one a line.
    hostile.py uapi-case SOCKET PEER_HEX INDEX
        Sends case INDEX (from 0) on its own connection; prints "ok DETAIL" (answered errno=-N, or the
        connection was closed) or "bad DETAIL".
    hostile.py stall SOCKET silent|trickle SECONDS READYFILE
        Holds a connection open for SECONDS with an unfinished request, silent or sending a byte every 2 s.
    hostile.py connect SOCKET
        Connects to a UNIX socket; prints "connected" or the error's errno name. Exit 0 only if connected.
"""

import errno
import hashlib
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

LOCALHOST = fgnet.LOCALHOST


class RecordingRelay(fgnet.PortPairRelay):
    """Relays between the two daemons and appends every datagram to the capture log; commands "hold",
    "pass" and "release" (see the module's documentation) are answered "ok"."""

    def __init__(self, listen, a_port, b_port, ctrl_port, log):
        super().__init__(listen, a_port, b_port, ctrl_port)
        self.log = log
        self.mode = "pass"
        self.held = []

    def command(self, text):
        if text in ("hold", "pass"):
            self.mode = text
        elif text == "release":
            for data, dst in self.held:
                self.send(data, dst)
            self.held.clear()
        return "ok"

    def datagram(self, data, src_port, dst_port):
        self.log.write("%s %d %d %s\n" % (self.mode, src_port, dst_port, data.hex()))
        self.log.flush()
        if self.mode == "pass":
            self.send(data, dst_port)
        else:
            self.held.append((data, dst_port))


def relay(listen, a_port, b_port, ctrl_port, capture, ready):
    with open(capture, "a") as log:
        RecordingRelay(listen, a_port, b_port, ctrl_port, log).serve(ready)


def read_capture(capture, target_port):
    """(forwarded, held) datagrams captured towards target_port."""
    forwarded, held = [], []
    with open(capture) as log:
        for line in log:
            fields = line.split()
            if len(fields) != 4 or int(fields[2]) != target_port:
                continue
            (forwarded if fields[0] == "pass" else held).append(bytes.fromhex(fields[3]))
    return forwarded, held


def message_type(data):
    return data[0] if data else None


def flipped(data, offset, mask):
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def with_valid_mac1(message, responder_public):
    """The message with a correct mac1 for the responder (and no mac2): it gets past the cheap check."""
    mac_key = hashlib.blake2s(b"mac1----" + responder_public).digest()
    alpha = message[:-32]
    return alpha + hashlib.blake2s(alpha, key=mac_key, digest_size=16).digest() + bytes(16)


def junk_corpus(forwarded, held, rng, responder_public):
    """[(kind, datagram)]: nothing here may be delivered, change an endpoint or get an answer."""
    corpus = []
    transports = [d for d in forwarded if message_type(d) == 4]
    samples = []
    # Exact replays of everything the peer sent (handshake messages and transport data).
    corpus += [("replay", d) for d in forwarded]
    for wanted in (1, 2):
        samples += [d for d in forwarded if message_type(d) == wanted][:1]
    samples += transports[-1:]
    samples += held[:1]
    for sample in samples:
        # Truncated: every length from 0 to 40 bytes, and one byte short.
        corpus += [("truncated", sample[:n]) for n in range(0, min(41, len(sample)))]
        corpus.append(("truncated", sample[:-1]))
        # One byte flipped at several offsets (header, index, counter, payload, tag).
        offsets = {0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 20, 24, 31, 32, 33, 40, 60, 100, 116, 132,
                   len(sample) // 2, len(sample) - 17, len(sample) - 16, len(sample) - 2, len(sample) - 1}
        for offset in sorted(o for o in offsets if 0 <= o < len(sample)):
            corpus.append(("bit-flip", flipped(sample, offset, 0x01)))
            corpus.append(("bit-flip", flipped(sample, offset, 0x80)))
        # The sample with one byte appended.
        corpus.append(("extended", sample + b"\x00"))
    index = transports[-1][4:8] if transports else b"\x01\x00\x00\x00"
    # Oversized junk, and an oversized "transport" message naming a real receiver index.
    corpus.append(("oversized", rng.randbytes(65000)))
    corpus.append(("oversized", b"\x04\x00\x00\x00" + index + rng.randbytes(65000 - 8)))
    # Unknown receiver index, with a real packet's body and with junk.
    unknown = bytes(a ^ b for a, b in zip(index, b"\x5a\xa5\x5a\xa5"))
    for body in [d for d in held + transports[-1:]][:2]:
        corpus.append(("unknown-index", body[:4] + unknown + body[8:]))
    corpus.append(("unknown-index", b"\x04\x00\x00\x00" + rng.randbytes(4) + bytes(8) + rng.randbytes(64)))
    # A 32-byte "keepalive" naming the real receiver index: counters 0, 2^40 and the largest.
    for counter in (0, 1 << 40, (1 << 64) - 1, (1 << 64) - 8192):
        corpus.append(("keepalive", b"\x04\x00\x00\x00" + index + struct.pack("<Q", counter) + rng.randbytes(16)))
    # Handshake messages full of garbage, right and wrong sizes, and unknown types.
    for size in (147, 148, 149):
        corpus.append(("initiation", b"\x01\x00\x00\x00" + rng.randbytes(size - 4)))
    corpus.append(("initiation", b"\x01\x00\x00\x00" + bytes(144)))
    # Garbage initiations with a valid mac1: they reach the Diffie-Hellman and AEAD steps. One is all
    # zeros (a low-order ephemeral), one has a real initiation's ephemeral with the rest garbage.
    corpus.append(("initiation-mac1", with_valid_mac1(b"\x01\x00\x00\x00" + rng.randbytes(144), responder_public)))
    corpus.append(("initiation-mac1", with_valid_mac1(b"\x01\x00\x00\x00" + bytes(144), responder_public)))
    for initiation in [d for d in forwarded if message_type(d) == 1 and len(d) == 148][:1]:
        corpus.append(("initiation-mac1", with_valid_mac1(initiation[:40] + rng.randbytes(108), responder_public)))
        # The real initiation with a flipped byte in the encrypted timestamp, mac1 recomputed.
        corpus.append(("initiation-mac1", with_valid_mac1(flipped(initiation, 100, 0x01), responder_public)))
    corpus.append(("response", b"\x02\x00\x00\x00" + rng.randbytes(88)))
    corpus.append(("response", b"\x02\x00\x00\x00" + rng.randbytes(4) + index + rng.randbytes(80)))
    corpus.append(("cookie", b"\x03\x00\x00\x00" + index + rng.randbytes(56)))
    for kind in (0, 5, 0xFF):
        corpus.append(("unknown-type", bytes([kind]) + rng.randbytes(147)))
    return corpus


def attack(capture, target_port, source_addr, responder_public):
    rng = random.Random(os.urandom(16))
    forwarded, held = read_capture(capture, target_port)
    corpus = junk_corpus(forwarded, held, rng, responder_public)
    sock = fgnet.udp_socket(source_addr, 0, sndbuf=1 << 20)
    kinds = {}
    for number, (kind, data) in enumerate(corpus):
        sock.sendto(data, (LOCALHOST, target_port))
        kinds[kind] = kinds.get(kind, 0) + 1
        if number % 16 == 15:
            time.sleep(0.002)  # let the daemon keep up: every datagram should be looked at
    answers = 0
    for data, source in fgnet.receive_until(sock, fgnet.deadline_after(1.0)):
        answers += 1
        sys.stderr.write("answer from %s: %s\n" % (source, data[:16].hex()))
    summary = ",".join("%s=%d" % item for item in sorted(kinds.items()))
    empty = sum(1 for _, data in corpus if not data)
    print("sent %d answers %d kinds %s held %d forwarded %d empty %d" % (len(corpus), answers, summary, len(held),
                                                                       len(forwarded), empty))


# ---------------------------------------------------------------------------------------------------------
# UAPI corpus
# ---------------------------------------------------------------------------------------------------------

NEGATIVE = re.compile(rb"(?:^|\n)errno=-[1-9][0-9]*\n\n$")


def exchange(path, payload, half_close, timeout=5.0):
    """Sends payload; returns (answer bytes, how it ended)."""
    sock = fgnet.unix_connect(path, timeout)
    answer = b""
    try:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer, "closed"
            answer += chunk
            if NEGATIVE.search(answer) or re.search(rb"(?:^|\n)errno=0\n\n$", answer):
                return answer, "answered"
    except socket.timeout:
        return answer, "timeout"
    except (BrokenPipeError, ConnectionResetError):
        return answer, "closed"
    finally:
        sock.close()


def uapi_cases(peer_hex):
    """[(name, payload, half_close)]: every one must be refused without changing the configuration."""
    rng = random.Random(os.urandom(16))
    key_hex = "a8" * 32
    return [
        ("unknown key", b"set=1\nbogus_key=1\n\n", False),
        ("bad hex in private_key", b"set=1\nprivate_key=" + b"zz" * 32 + b"\n\n", False),
        ("short private_key", b"set=1\nprivate_key=" + b"ab" * 31 + b"\n\n", False),
        ("device key after a peer", ("set=1\npublic_key=%s\nlisten_port=4242\n\n" % peer_hex).encode(), False),
        ("valid line then an invalid one", b"set=1\nlisten_port=4243\nbogus=1\n\n", False),
        ("private_key then replace_peers=false", ("set=1\nprivate_key=%s\nreplace_peers=false\n\n" % key_hex).encode(),
         False),
        ("line without '='", b"set=1\nlisten_port\n\n", False),
        ("port out of range", b"set=1\nlisten_port=65536\n\n", False),
        ("negative fwmark", b"set=1\nfwmark=-1\n\n", False),
        ("bad endpoint", ("set=1\npublic_key=%s\nendpoint=999.1.1.1:80\n\n" % peer_hex).encode(), False),
        ("allowed_ip prefix /33", ("set=1\npublic_key=%s\nallowed_ip=10.0.0.0/33\n\n" % peer_hex).encode(), False),
        ("NUL inside a key", b"set=1\nlisten\x00port=4244\n\n", False),
        ("huge line (1 MiB)", b"set=1\nlisten_port=" + b"1" * (1 << 20) + b"\n\n", False),
        ("binary junk", bytes(rng.randrange(256) for _ in range(8192)) + b"\n\n", False),
        ("unknown operation", b"hello=1\n\n", False),
        ("half a set request then hang-up", b"set=1\nlisten_port=4245\n", True),
        ("get=1 without its blank line, then hang-up", b"get=1\n", True),
        ("get=1 followed by a body", b"get=1\nlisten_port=1\n\n", False),
    ]


def uapi_case(path, peer_hex, index):
    """Runs one case; prints "ok DETAIL" or "bad DETAIL"."""
    name, payload, half_close = uapi_cases(peer_hex)[index]
    try:
        answer, how = exchange(path, payload, half_close)
    except OSError as err:
        print("bad %s" % err)
        return False
    shown = answer[-40:].decode(errors="replace").replace("\n", "\\n")
    if how == "answered" and NEGATIVE.search(answer):
        print("ok answered '%s'" % shown)
        return True
    if how == "closed" and (not answer or NEGATIVE.search(answer)):
        print("ok connection closed after %d answer bytes '%s'" % (len(answer), shown))
        return True
    print("bad %s, answer '%s'" % (how, shown))
    return False


def stall(path, mode, seconds, ready):
    """Holds a configuration connection open for `seconds` with an unfinished request: "silent" sends
    nothing more after it, "trickle" sends one more byte of its never-ending line every 2 s."""
    sock = fgnet.unix_connect(path)
    # An unfinished line that changes nothing even where a request cut short is applied (wireguard-go).
    sock.sendall(b"set=1\nstalled_")
    fgnet.signal_ready(ready)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(min(2, max(0, deadline - time.monotonic())))
            if mode == "trickle":
                sock.sendall(b"x")
    except OSError as err:
        print("%s: cut off: %s" % (mode, err))
        return
    print("%s: held for %g s" % (mode, seconds))


def connect(path):
    try:
        fgnet.unix_connect(path, timeout=2).close()
    except OSError as err:
        print(errno.errorcode.get(err.errno, str(err.errno)))
        return False
    print("connected")
    return True


def uapi_names():
    """Prints the names of the malformed-request cases, one a line."""
    for name, _, _ in uapi_cases("00" * 32):
        print(name)


COMMANDS = {
    "relay": (relay, (int, int, int, int, str, str)),
    "attack": (attack, (str, int, str, bytes.fromhex)),
    "uapi-names": (uapi_names, ()),
    "uapi-case": (uapi_case, (str, str, int)),
    "stall": (stall, (str, str, float, str)),
    "connect": (connect, (str,)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
