"""A ZMTP 3.0 peer over a plain TCP socket (NULL mechanism): for tests that must send what
no ZeroMQ socket would, at the speed of ``sendall`` (e.g. a million empty frames)."""
from __future__ import annotations

import socket
import struct

GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
READY = bytes([4, len(_READY_BODY)]) + _READY_BODY          # a command frame


def frame(body: bytes, more: bool) -> bytes:
    flags = 1 if more else 0
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise ConnectionError("peer closed")
        buf += got
    return buf


class RawPeer:
    """A DEALER as far as the engine's ROUTER can tell. ``send_raw`` sends bytes as they are."""

    def __init__(self, port: int, timeout_s: float = 30.0, handshake: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        if handshake:
            self.sock.sendall(GREETING)
            _recv_exact(self.sock, 64)
            self.sock.sendall(READY)
            self._read_frame()                            # the server's READY command

    @staticmethod
    def greeting_and_ready() -> bytes:
        """What a DEALER sends first, without waiting for the server's half."""
        return GREETING + READY

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_frame(self) -> tuple[int, bytes]:
        flags = _recv_exact(self.sock, 1)[0]
        size = struct.unpack(">Q", _recv_exact(self.sock, 8))[0] if flags & 2 else _recv_exact(self.sock, 1)[0]
        return flags, _recv_exact(self.sock, size)

    def recv_message(self) -> list[bytes]:
        frames = []
        while True:
            flags, body = self._read_frame()
            if flags & 4:                                 # a command (e.g. PING): not a message
                continue
            frames.append(body)
            if not flags & 1:
                return frames

    def close(self) -> None:
        self.sock.close()
