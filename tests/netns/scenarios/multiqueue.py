"""Helpers of the multiqueue scenario (standard library only).

  flows-send ADDR PORT FLOWS COUNT     FLOWS UDP flows (one socket, so one source port, each) to ADDR:PORT,
                                       COUNT numbered datagrams each, sent round-robin over the flows
  flows-recv ADDR PORT READY SECONDS FLOWS COUNT
                                       receives them until all FLOWS x COUNT arrived or SECONDS passed; prints
                                       "flows F datagrams D lost L reordered R duplicates U (receiving socket
                                       overflowed: O)": a datagram is reordered when its number is below one
                                       its flow delivered before; O is the kernel's count of datagrams the
                                       receiving socket itself dropped (a full buffer), for diagnosis
"""
import os
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True  # the suite runs as root: leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fgnet  # noqa: E402 (tests/netns/fgnet.py, found through the path set just above)

PAYLOAD = 1000  # bytes per datagram: a real packet, not a header-only one
ROUND_PAUSE = 0.002  # seconds between rounds: a steady load (2000 datagrams/s per sender), not a burst
MAGIC = b"fgmq"


def flows_send(addr, port, flows, count):
    socks = [fgnet.udp_socket(addr) for _ in range(flows)]
    for number in range(count):
        for flow, sock in enumerate(socks):
            head = MAGIC + struct.pack("!II", flow, number)
            sock.sendto(head + bytes(PAYLOAD - len(head)), (addr, port))
        time.sleep(ROUND_PAUSE)


SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: SO_RCVBUF beyond net.core.rmem_max (root)
SO_RXQ_OVFL = 40  # ancillary data: datagrams the socket dropped because its buffer was full


def recv_counting_overflow(sock, state):
    """(data, source) of the next datagram; notes the socket's own drop count in state["overflow"]."""
    data, ancillary, _, source = sock.recvmsg(65535, socket.CMSG_SPACE(4))
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
            state["overflow"] = struct.unpack("I", value[:4])[0]
    return data, source


def flows_recv(addr, port, ready, seconds, flows, count):
    sock = fgnet.udp_socket(addr, port, rcvbuf=8 << 20)
    # A receiver stalled by a busy machine must not lose what the tunnel delivered: room for every datagram.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    state = {"overflow": 0}
    fgnet.signal_ready(ready)
    highest = {}  # (source, flow) -> highest number delivered so far
    seen = set()
    datagrams = reordered = duplicates = 0
    receive = lambda sock: recv_counting_overflow(sock, state)  # noqa: E731
    for data, source in fgnet.receive_until(sock, fgnet.deadline_after(seconds), receive):
        if not data.startswith(MAGIC) or len(data) != PAYLOAD:
            continue
        flow, number = struct.unpack("!II", data[len(MAGIC):len(MAGIC) + 8])
        key = (source, flow)
        datagrams += 1
        if (key, number) in seen:
            duplicates += 1
            continue
        seen.add((key, number))
        if number < highest.get(key, -1):
            reordered += 1
        highest[key] = max(number, highest.get(key, -1))
        if len(seen) == flows * count:
            break
    keys = {key for key, _ in seen}
    lost = flows * count - len(seen)
    print("flows %d datagrams %d lost %d reordered %d duplicates %d (receiving socket overflowed: %d)"
          % (len(keys), datagrams, lost, reordered, duplicates, state["overflow"]))


COMMANDS = {
    "flows-send": (flows_send, (str, int, int, int)),
    "flows-recv": (flows_recv, (str, int, str, float, int, int)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
