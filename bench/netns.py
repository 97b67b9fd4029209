"""Two network namespaces joined by a veth pair, made by a test or a bench (bench.enforce) and
always removed.

    with VethPair() as net:                 # net.server_ns holds 10.200.N.1 on net.server_if
        with net.inside(net.server_ns): ... # this thread's sockets/netlink live in that ns
        net.connect_from(net.blocked, port) # a TCP handshake from a source in the client ns

Addresses exist only inside these namespaces (10.200.N.0/24 and the ULA fd00:ee:N::/48, N
from the pid), never elsewhere. The IPv6 clients sit in three /64s of that /48 (blocked6 in
``prefix6``), all on the link, added with ``nodad`` so they are usable at once. Entering a namespace is per thread (setns), so the test's main thread goes in
and comes back; a socket keeps the namespace it was made in.
"""
from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def _setns(path: str):
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
        try:
            yield
        finally:
            if _libc.setns(here, CLONE_NEWNET) != 0:   # cannot happen: our own namespace
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)


def syn_packet(src: str, dst: str, dport: int) -> bytes:
    """An IPv4 TCP SYN for a raw socket (the kernel fills in the IP checksum; the enforcement
    program reads no TCP checksum)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, socket.IPPROTO_TCP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


NEXTHDR_DEST = 60


def syn_packet6(src: str, dst: str, dport: int, dest_options: int = 0) -> bytes:
    """An IPv6 TCP SYN for a raw socket, after ``dest_options`` empty destination-options
    headers (8 bytes each: next header, length 0, a 4-byte PadN); the TCP checksum is left 0
    (the enforcement program reads none; the server's stack drops what gets through)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    ext = b"".join(struct.pack("!BB6s", NEXTHDR_DEST if i < dest_options - 1 else socket.IPPROTO_TCP,
                               0, b"\x01\x04\0\0\0\0") for i in range(dest_options))
    first = NEXTHDR_DEST if dest_options else socket.IPPROTO_TCP
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(tcp), first, 64,
                      socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    return ip6 + ext + tcp


class VethPair:
    def __init__(self, suffix: str = ""):
        """``suffix``: a second pair of one process (namespace names are global)."""
        n = os.getpid() % 200 + 20
        tag = f"{os.getpid() % 100000}{suffix}"
        self.server_ns, self.client_ns = f"re-srv-{tag}", f"re-cli-{tag}"
        self.server_if, self.client_if = f"re-s{tag}", f"re-c{tag}"
        self.server = f"10.200.{n}.1"
        self.blocked, self.allowed, self.other = f"10.200.{n}.2", f"10.200.{n}.3", f"10.200.{n}.4"
        self.prefix = f"10.200.{n}.0/24"
        net6 = f"fd00:ee:{n:x}"
        self.server6 = f"{net6}::1"
        self.blocked6, self.allowed6, self.other6 = f"{net6}:b::2", f"{net6}:a::3", f"{net6}:c::4"
        self.prefix6 = f"{net6}:b::/64"

    def __enter__(self) -> "VethPair":
        try:
            _ip("netns", "add", self.server_ns)
            _ip("netns", "add", self.client_ns)
            _ip("link", "add", self.server_if, "netns", self.server_ns, "type", "veth",
                "peer", "name", self.client_if, "netns", self.client_ns)
            for ns, dev, addrs in ((self.server_ns, self.server_if, [self.server]),
                                   (self.client_ns, self.client_if, [self.blocked, self.allowed, self.other])):
                for a in addrs:
                    _ip("-n", ns, "addr", "add", f"{a}/24", "dev", dev)
                six = [self.server6] if ns == self.server_ns else [self.blocked6, self.allowed6, self.other6]
                for a in six:
                    _ip("-n", ns, "addr", "add", f"{a}/48", "dev", dev, "nodad")
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in (self.server_ns, self.client_ns):    # deleting a ns deletes its veth end
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def inside(self, ns: str):
        return _setns(f"/run/netns/{ns}")

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def connect_from(self, source: str, port: int, timeout_s: float = 1.0) -> bool:
        """True if a TCP handshake from ``source`` to the server's ``port`` completes."""
        v6 = ":" in source
        with self.inside(self.client_ns):
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
        try:
            s.settimeout(timeout_s)
            s.bind((source, 0))
            s.connect((self.server6 if v6 else self.server, port))
            return True
        except (socket.timeout, ConnectionRefusedError):
            return False
        finally:
            s.close()

    def raw_socket(self) -> socket.socket:
        """A raw IPv4 socket in the client namespace (sendto(syn_packet(...), (server, 0)))."""
        with self.inside(self.client_ns):
            return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def raw_socket6(self) -> socket.socket:
        """A raw IPv6 socket in the client namespace; IPPROTO_RAW sends the IPv6 header we
        built (sendto(syn_packet6(...), (server6, 0)))."""
        with self.inside(self.client_ns):
            return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def xdp_shown(self) -> bool:
        """`ip link show` names an xdp program on the server's interface."""
        out = subprocess.run(["ip", "-n", self.server_ns, "link", "show", self.server_if],
                             capture_output=True, text=True, timeout=10).stdout
        return "xdp" in out
