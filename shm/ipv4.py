"""IPv4 addresses as the schema's ``ipv4`` type: a u32 in records, kernels and lists (the
address's integer value, 10.0.0.1 = 0x0A000001, little-endian in a record like every u32),
a dotted quad wherever a person reads or writes one (JSON events, lists, explain).

Parsing is strict, so one address has one spelling: four decimal octets 0..255 separated by
dots, no leading zeros (``010`` is octal to inet_aton and decimal to others), no sign, no
whitespace, no other form (``10.1``, hex, ``0x0a.0.0.1``).
"""
from __future__ import annotations

import re

_QUAD = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
MAX_SHOWN = 40


def parse_ipv4(text: str) -> int:
    """The u32 of a dotted quad; ValueError with the reason (the text shown, cut to 40)."""
    shown = repr(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "...")
    m = _QUAD.fullmatch(text) if text.isascii() else None
    if m is None:
        why = "has whitespace" if any(c.isspace() for c in text) else \
            "is not four decimal octets a.b.c.d"
        raise ValueError(f"{shown} {why} (an IPv4 address like 10.0.0.1)")
    v = 0
    for octet in m.groups():
        if len(octet) > 1 and octet[0] == "0":
            raise ValueError(f"{shown}: octet {octet!r} has a leading zero (ambiguous: octal to some parsers)")
        n = int(octet)
        if n > 255:
            raise ValueError(f"{shown}: octet {n} out of range 0..255")
        v = v << 8 | n
    return v


def format_ipv4(value: int) -> str:
    """The dotted quad of a u32 (any int is taken modulo 2**32, as a u32 record holds it)."""
    v = int(value) & 0xFFFFFFFF
    return f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def parse_cidr(text: str) -> tuple[int, int]:
    """``a.b.c.d/n`` -> (first, last) address of the block; the address strict as in
    parse_ipv4, n decimal 0..32 without leading zeros, no host bits set (10.0.0.1/8 is
    refused: which block was meant?). ValueError with the reason."""
    addr, slash, bits = text.partition("/")
    if not slash:
        v = parse_ipv4(text)
        return v, v
    first = parse_ipv4(addr)
    if not bits.isascii() or not bits.isdigit() or (len(bits) > 1 and bits[0] == "0") or int(bits) > 32:
        raise ValueError(f"{text[:MAX_SHOWN]!r}: prefix length must be 0..32, got {bits[:MAX_SHOWN]!r}")
    host = (1 << (32 - int(bits))) - 1
    if first & host:
        raise ValueError(f"{text!r} has host bits set (the block is {format_ipv4(first & ~host)}/{bits})")
    return first, first | host


def cidr4_key(text: str) -> int:
    """A cidr4 list value as its u64: prefix length << 32 | network address, so one block has
    one key (a bare address is its /32). Host bits set are refused as in parse_cidr, never
    masked: 10.0.0.1/8 is a typo for one of two blocks and the list must not guess."""
    first, last = parse_cidr(text)
    return (33 - (last - first + 1).bit_length()) << 32 | first


def format_cidr4(key: int) -> str:
    """``a.b.c.d/n`` of a cidr4_key value."""
    return f"{format_ipv4(key)}/{(int(key) >> 32) & 63}"
