"""IPv6 prefixes as the ``cidr6`` list type: one Python int per prefix, prefix length << 128 |
network address (so one block has one key; a bare address is its /128), written the way
ipaddress compresses it (``2001:db8::/32``) wherever a person reads one.

Parsing is strict, so a list cannot guess: an IPv6 address as ipaddress reads it (no zone
``%eth0``, no whitespace, no IPv4 dotted form alone), the length decimal 0..128 without
leading zeros, and no host bits set (``2001:db8::1/32`` is refused, as cidr4 refuses
``10.0.0.1/8``: a typo for which block?).
"""
from __future__ import annotations

import ipaddress

MAX_SHOWN = 60
ADDR_MASK = (1 << 128) - 1


def cidr6_key(text: str) -> int:
    """The int of ``addr/len`` or a bare ``addr`` (/128); ValueError with the reason."""
    shown = repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...")
    if not text.isascii() or any(c.isspace() for c in text) or "%" in text:
        raise ValueError(f"{shown} is not an IPv6 prefix like 2001:db8::/32 (no whitespace or zone)")
    addr, slash, bits = text.partition("/")
    try:
        ip = ipaddress.IPv6Address(addr)
    except ValueError:
        raise ValueError(f"{shown} is not an IPv6 prefix like 2001:db8::/32 or an address") from None
    if not slash:
        return 128 << 128 | int(ip)
    if not bits.isdigit() or (len(bits) > 1 and bits[0] == "0") or int(bits) > 128:
        raise ValueError(f"{shown}: prefix length must be 0..128, got {bits[:MAX_SHOWN]!r}")
    n = int(bits)
    host = (1 << (128 - n)) - 1
    if int(ip) & host:
        net = ipaddress.IPv6Address(int(ip) & ~host & ADDR_MASK)
        raise ValueError(f"{shown} has host bits set (the block is {net}/{n})")
    return n << 128 | int(ip)


def format_cidr6(key: int) -> str:
    """``addr/len`` of a cidr6_key value."""
    return f"{ipaddress.IPv6Address(int(key) & ADDR_MASK)}/{int(key) >> 128}"


def format_source6(addr: int) -> str:
    """A 128-bit source address as ipaddress writes it (``fd00::2``)."""
    return str(ipaddress.IPv6Address(int(addr) & ADDR_MASK))


# A request's sender (the ZeroMQ Peer-Address, ingress.autoblock) as one int for both families:
# the 128-bit IPv6 address, an IPv4 one in its IPv4-mapped form (::ffff:a.b.c.d, as a
# dual-stack socket names it); 0: none known.
MAPPED4 = 0xFFFF << 32


def peer_key(text: str) -> int:
    """The sender int of ``10.0.0.2``, ``::ffff:10.0.0.2`` or ``fd00::2``; ValueError with
    the reason (anything else, a zone ``%eth0`` or the unspecified address included)."""
    if not isinstance(text, str):
        raise ValueError(f"an address is a string like 10.0.0.2 or fd00::2, got {type(text).__name__}")
    shown = repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...")
    if not text.isascii() or "%" in text or any(c.isspace() for c in text):
        raise ValueError(f"{shown} is not an IPv4 or IPv6 address (no whitespace or zone)")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{shown} is not an IPv4 or IPv6 address") from None
    key = MAPPED4 | int(ip) if ip.version == 4 else int(ip)
    if not key:
        raise ValueError(f"{shown} is the unspecified address, never a sender")
    return key


def is_peer4(key: int) -> bool:
    return int(key) >> 32 == 0xFFFF


def format_peer(key: int) -> str:
    """``10.0.0.2`` for an IPv4 sender, ``fd00::2`` for an IPv6 one."""
    if is_peer4(key):
        return str(ipaddress.IPv4Address(int(key) & 0xFFFFFFFF))
    return format_source6(key)
