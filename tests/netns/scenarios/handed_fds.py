#!/usr/bin/env python3
"""Starts a daemon with descriptors handed in, as an app, a privileged helper or systemd would.

    handed_fds.py [--tun IFNAME [--vnet]] [--uapi PATH | --systemd PATH] -- COMMAND...

--tun IFNAME   opens /dev/net/tun attached to a new TUN interface IFNAME (IFF_TUN | IFF_NO_PI, with
               IFF_VNET_HDR if --vnet) and passes it as WG_TUN_FD (wireguard-go's variable).
--uapi PATH    binds and listens on the UNIX socket PATH and passes it as WG_UAPI_FD.
--systemd PATH binds and listens on PATH and passes it by systemd's socket-activation protocol: descriptor
               3, LISTEN_FDS=1, LISTEN_PID = this process's pid (which COMMAND keeps: it is exec'd).
Then execs COMMAND with the descriptors inherited and nothing else of this process left.
"""

import fcntl
import os
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def listening_socket(path):
    """A listening UNIX stream socket at path (a stale file there is replaced), mode 0600."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def open_tun(name, vnet):
    """A descriptor attached to a new TUN interface name."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    return fd


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    env = dict(os.environ)
    keep = []
    if "--systemd" in options:
        # First, so that the listener can take descriptor 3 before anything else might.
        sock = listening_socket(options[options.index("--systemd") + 1])
        if sock.fileno() != 3:
            os.dup2(sock.fileno(), 3)
        os.set_inheritable(3, True)
        keep.append(sock)
        env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="uapi")
    if "--uapi" in options:
        sock = listening_socket(options[options.index("--uapi") + 1])
        os.set_inheritable(sock.fileno(), True)
        keep.append(sock)
        env["WG_UAPI_FD"] = str(sock.fileno())
    if "--tun" in options:
        fd = open_tun(options[options.index("--tun") + 1], "--vnet" in options)
        os.set_inheritable(fd, True)
        env["WG_TUN_FD"] = str(fd)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
