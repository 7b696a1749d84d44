"""Helpers of the metrics scenario (standard library only).

  scrape URL OUT               GET URL, write the body to OUT; prints the status code
  sniff IFACE PORT SECONDS OUT READY
                               capture (AF_PACKET) the first WireGuard transport message sent to UDP PORT
                               over IFACE; write it as hex to OUT (nothing if none came in SECONDS)
  forge HEXFILE ADDR PORT      send to ADDR:PORT, from a fresh socket: the captured message as is (a
                               replay), then with a fresh counter (so only its tag fails: decryption),
                               then with an unknown receiver index
"""
import os
import struct
import sys
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # the suite runs as root: leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fgnet  # noqa: E402 (tests/netns/fgnet.py, found through the path set just above)


def scrape(url, out):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        body, status = err.read(), err.code
    with open(out, "wb") as f:
        f.write(body)
    print(status)


def receive_packet(sock):
    """The next packet, whole."""
    return sock.recv(65535)


def sniff(iface, port, seconds, out, ready):
    sock = fgnet.packet_socket(iface, fgnet.ETH_P_IP)
    fgnet.signal_ready(ready)
    for packet in fgnet.receive_until(sock, fgnet.deadline_after(seconds), receive_packet):
        udp = fgnet.ipv4_udp(packet)
        if udp is None:
            continue
        _, dport, payload = udp
        if dport == port and len(payload) >= 32 and payload[0] == 4:
            with open(out, "w") as f:
                f.write(payload.hex())
            return


def forge(hexfile, addr, port):
    with open(hexfile) as f:
        message = bytearray.fromhex(f.read().strip())
    fresh = bytearray(message)
    fresh[8:16] = struct.pack("<Q", 1 << 40)
    unknown = bytearray(message)
    unknown[4:8] = struct.pack("<I", struct.unpack("<I", message[4:8])[0] ^ 0x5A5A5A5A)
    sock = fgnet.udp_socket(addr)
    for datagram in (message, fresh, unknown):
        sock.sendto(bytes(datagram), (addr, port))
        time.sleep(0.05)


COMMANDS = {
    "scrape": (scrape, (str, str)),
    "sniff": (sniff, (str, int, float, str, str)),
    "forge": (forge, (str, str, int)),
}

if __name__ == "__main__":
    sys.exit(fgnet.run_command(sys.argv, COMMANDS))
