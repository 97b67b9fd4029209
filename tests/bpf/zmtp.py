"""Reference oracle: bytes a libzmq REQ <-> ROUTER exchange puts on a TCP stream (ZMTP 3.x).

Per connection and direction: the 64-byte greeting, one READY command with metadata
(libzmq adds Socket-Type, and Identity for REQ/DEALER/ROUTER sockets), then for every
message of a REQ/ROUTER pair an empty delimiter frame and the body frame. A frame costs
2 bytes of header up to 255 bytes of body, 9 bytes above (RFC 23/ZMTP).
"""
from __future__ import annotations

GREETING = 64


def frame(n: int) -> int:
    return (2 if n <= 255 else 9) + n


def _prop(name: str, value: bytes) -> int:
    return 1 + len(name) + 4 + len(value)


def ready(socket_type: str, identity: bytes = b"") -> int:
    body = 1 + len("READY") + _prop("Socket-Type", socket_type.encode())
    if socket_type in ("REQ", "DEALER", "ROUTER"):
        body += _prop("Identity", identity)
    return frame(body)


def stream_bytes(socket_type: str, bodies: list[int]) -> int:
    """Bytes one REQ or ROUTER peer sends on one connection carrying these message bodies."""
    return GREETING + ready(socket_type) + sum(frame(0) + frame(n) for n in bodies)
