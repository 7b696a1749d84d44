"""Helpers of the metrics scenario (standard library only).

  scrape URL OUT               GET URL, write the body to OUT; prints the status code
  sniff IFACE PORT SECONDS OUT READY
                               capture (AF_PACKET) the first WireGuard transport message sent to UDP PORT
                               over IFACE; write it as hex to OUT (nothing if none came in SECONDS)
  forge HEXFILE ADDR PORT      send to ADDR:PORT, from a fresh socket: the captured message as is (a
                               replay), then with a fresh counter (so only its tag fails: decryption),
                               then with an unknown receiver index
"""
import socket
import struct
import sys
import time
import urllib.error
import urllib.request


def scrape(url, out):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        body, status = err.read(), err.code
    with open(out, "wb") as f:
        f.write(body)
    print(status)


def sniff(iface, port, seconds, out, ready):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sock.bind((iface, 0))
    open(ready, "w").close()
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            packet = sock.recv(65535)
        except socket.timeout:
            break
        if len(packet) < 28 or packet[9] != 17:  # IPv4 header, UDP
            continue
        ihl = (packet[0] & 15) * 4
        dport = struct.unpack("!H", packet[ihl + 2:ihl + 4])[0]
        payload = packet[ihl + 8:]
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
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for datagram in (message, fresh, unknown):
        sock.sendto(bytes(datagram), (addr, port))
        time.sleep(0.05)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "scrape":
        scrape(sys.argv[2], sys.argv[3])
    elif mode == "sniff":
        sniff(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6])
    elif mode == "forge":
        forge(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("unknown mode " + mode)
