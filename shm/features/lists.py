"""Value lists (``ip in blocked_ips``): sorted u64 arrays, double-buffered, replaced atomically.

Buffer layout (uint64)::

    word 0   generation (the active half is generation & 1)
    word 1   length of half 0
    word 2   length of half 1
    word 3   capacity (values per half)
    word 4   words per value: 0 or 1 (u64 values), 3 (cidr6: prefix length, address high, low)
    word 8   half 0: capacity sorted unique values
    8+cap*w  half 1

Values are encoded with shm.features.keys (u32/u64/i64 exact, bytesN<=8 exact, longer
bytes hashed). One writer at a time (the admin plane) builds the new sorted array into the
inactive half and publishes it with a release store of generation+1. Readers (kernels) load
the generation (acquire), binary-search that half and re-check the generation after a full
fence (seqlock): if it moved, the half may have been rewritten, so they search again.

List file format: one value per line; ``#`` starts a comment; blank lines are skipped.
u32 also accepts a dotted IPv4 address (its integer value, 1.2.3.4 = 0x01020304); ipv4 takes
dotted addresses only, parsed strictly (shm.ipv4). cidr4 takes ``a.b.c.d/n`` prefixes (a bare
address is its /32) stored as prefix length << 32 | network; a prefix with host bits set is
refused (shm.ipv4.cidr4_key). cidr6 takes IPv6 ``addr/n`` prefixes (a bare address is its
/128), 136 bits each, so a cidr6 value is a Python int (shm.ipv6.cidr6_key) stored as three
words, and list_values returns an object array of ints for it. cidr4 and cidr6 lists feed the
kernel's prefix tries (enforce:); rules cannot test membership in them (rules.typecheck_compare
refuses it). Numbers may be decimal or 0x hex. A bad
line refuses the whole file with its line number.
"""
from __future__ import annotations

import ipaddress

import numpy as np
from numba import njit

from shm.features._atomics import _fence, _load_acquire, _store_release
from shm.features.keys import key_from_python
from shm.ipv4 import cidr4_key, parse_ipv4
from shm.ipv6 import cidr6_key
from shm.runtime.textfile import TextFileError, excerpt, read_text_file

W_GEN, W_LEN0, W_CAP, W_WIDTH = 0, 1, 3, 4
HEADER_WORDS = 8
WIDE_TYPES = {"cidr6": 3}          # types whose values do not fit a u64: words per value
_M64 = (1 << 64) - 1
MAX_RETRIES = 1000


class ListError(ValueError):
    """A list file or value is invalid; the message names the file and line."""


def value_width(vtype: str) -> int:
    return WIDE_TYPES.get(vtype, 1)


def list_words(capacity: int, width: int = 1) -> int:
    return HEADER_WORDS + 2 * capacity * width


def init_list(buf: np.ndarray, capacity: int, width: int = 1) -> None:
    if buf.dtype != np.uint64 or buf.shape[0] < list_words(capacity, width):
        raise ValueError(f"list buffer: need uint64[{list_words(capacity, width)}], got {buf.dtype}[{buf.shape}]")
    buf[W_CAP] = capacity
    buf[W_WIDTH] = width


def _width(buf: np.ndarray) -> int:
    return int(buf[W_WIDTH]) or 1      # 0: a buffer from before the width word, u64 values


def as_values(buf: np.ndarray, values) -> np.ndarray:
    """``values`` (ints) as ``buf``'s list holds them: a uint64 array, or for a wide list
    (cidr6) an object array of Python ints. Sorted, unique."""
    if _width(buf) == 1:
        return np.unique(np.asarray(values, dtype=np.uint64))
    return np.array(sorted({int(v) for v in values}), dtype=object)


@njit(cache=True)
def _list_contains(lst, v):
    """True if the u64 ``v`` is in the list's active half."""
    cap = np.int64(lst[W_CAP])
    v = np.uint64(v)
    found = False
    for _ in range(MAX_RETRIES):
        g = _load_acquire(lst, W_GEN)   # acquire: the half and its length are published
        h = np.int64(g & np.uint64(1))
        n = np.int64(lst[W_LEN0 + h])
        base = HEADER_WORDS + h * cap
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) >> 1
            if lst[base + mid] < v:
                lo = mid + 1
            else:
                hi = mid
        found = lo < n and lst[base + lo] == v
        _fence()                        # full fence: the searched loads complete before the re-check
        if _load_acquire(lst, W_GEN) == g:
            break
    return found


@njit(cache=True)
def _list_publish(lst, gen):
    _store_release(lst, W_GEN, gen)     # release: the new half and length are visible first


def replace_list(buf: np.ndarray, values: np.ndarray) -> int:
    """Publish ``values`` (any u64 array) as the list's content; returns the new generation.
    Single writer. Raises ListError if the values do not fit."""
    if _width(buf) != 1:
        return _replace_wide(buf, values)
    vals = np.unique(np.asarray(values, dtype=np.uint64))
    cap = int(buf[W_CAP])
    if vals.shape[0] > cap:
        raise ListError(f"list: {vals.shape[0]} values exceed capacity={cap}")
    g = int(buf[W_GEN])
    h = (g + 1) & 1
    base = HEADER_WORDS + h * cap
    buf[base:base + vals.shape[0]] = vals
    buf[W_LEN0 + h] = vals.shape[0]
    _list_publish(buf, g + 1)
    return g + 1


def _replace_wide(buf: np.ndarray, values) -> int:
    """replace_list for a list of 3-word values (cidr6): rows (high, middle, low word) of
    each int, in the ints' order."""
    vals = sorted({int(v) for v in values})
    cap, w = int(buf[W_CAP]), _width(buf)
    if len(vals) > cap:
        raise ListError(f"list: {len(vals)} values exceed capacity={cap}")
    if any(not 0 <= v < 1 << 64 * w for v in vals):
        raise ListError(f"list: a value does not fit {w} words")
    g = int(buf[W_GEN])
    h = (g + 1) & 1
    base = HEADER_WORDS + h * cap * w
    rows = np.array([[v >> 64 * (w - 1 - k) & _M64 for k in range(w)] for v in vals],
                    dtype=np.uint64).reshape(-1)
    buf[base:base + rows.shape[0]] = rows
    buf[W_LEN0 + h] = len(vals)
    _list_publish(buf, g + 1)
    return g + 1


def list_values(buf: np.ndarray) -> np.ndarray:
    """A copy of the active half (admin `list show`): uint64, or for a wide list (cidr6) an
    object array of Python ints."""
    g = int(buf[W_GEN])
    h = g & 1
    cap, w = int(buf[W_CAP]), _width(buf)
    n = int(buf[W_LEN0 + h])
    half = buf[HEADER_WORDS + h * cap * w:HEADER_WORDS + h * cap * w + n * w]
    if w == 1:
        return half.copy()
    out = np.empty(n, dtype=object)
    for i in range(n):
        v = 0
        for k in range(w):
            v = v << 64 | int(half[i * w + k])
        out[i] = v
    return out


def parse_value(text: str, vtype: str) -> int:
    """One list value as its u64 encoding. Raises ValueError with a short reason that quotes
    at most a short excerpt of ``text``."""
    if vtype.startswith("bytes"):
        n = int(vtype[5:])
        if len(text.encode()) > n:
            raise ValueError(f"{excerpt(text)} longer than {vtype}")
        return key_from_python(text.encode(), vtype)
    if vtype == "ipv4":
        return parse_ipv4(text)
    if vtype == "cidr4":
        return cidr4_key(text)
    if vtype == "cidr6":
        return cidr6_key(text)
    if vtype == "u32" and text.count(".") == 3:
        try:
            return int(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"not an IPv4 address: {excerpt(text)}") from None
    try:
        v = int(text, 0)
    except ValueError:
        raise ValueError(f"not an integer: {excerpt(text)}") from None
    lo, hi = {"u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "i64": (-2**63, 2**63 - 1)}[vtype]
    if not lo <= v <= hi:
        raise ValueError(f"{excerpt(str(v))} out of range for {vtype}")
    return v & 0xFFFFFFFFFFFFFFFF


def parse_list_text(text: str, vtype: str, where: str = "<text>") -> np.ndarray:
    """Parse a list file's text into sorted unique values (u64; object ints for cidr6, which
    do not fit one); the first bad line raises
    ListError('<where>:<line>: ...') and nothing is returned."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        try:
            out.append(parse_value(s, vtype))
        except ValueError as e:
            raise ListError(f"{where}:{i}: {e}") from None
    if value_width(vtype) != 1:
        return np.array(sorted(set(out)), dtype=object)
    return np.unique(np.array(out, dtype=np.uint64))


MAX_LIST_FILE_BYTES = 64 << 20     # a 2^22-value list of dotted IPs is about 64 MiB


def load_list_file(path: str, vtype: str) -> np.ndarray:
    """A list file: a regular file of at most MAX_LIST_FILE_BYTES (shm.runtime.textfile)."""
    try:
        text = read_text_file(path, MAX_LIST_FILE_BYTES, "list file")
    except TextFileError as e:
        raise ListError(str(e)) from None
    return parse_list_text(text, vtype, path)
