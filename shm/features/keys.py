"""Key and value encoding to u64, identical in njit code and in Python (list files, admin).

- integer and bool fields: the value's two's-complement bits as u64 (exact);
- bytesN with N <= 8: the bytes packed little-endian, zero padded (exact);
- bytesN with N > 8: a 64-bit hash (FNV-1a then splitmix64); two different values collide
  with probability 2^-64 per pair (about 3e-6 for any collision among 1e7 keys);
- a pair of fields: a 64-bit hash of both encodings (same collision bound).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.features.table import _mix64


@njit(cache=True, inline="always")
def _key_int(x):
    return np.uint64(np.int64(x)) if x < 0 else np.uint64(x)


@njit(cache=True)
def _key_bytes(s, declared_n):
    """Encode a bytes value (record charseq or uint8 array, trailing zeros optional)."""
    n = len(s)
    if declared_n <= 8:
        v = np.uint64(0)
        for j in range(n):
            v |= np.uint64(s[j]) << np.uint64(8 * j)
        return v
    while n > 0 and s[n - 1] == 0:
        n -= 1
    h = np.uint64(0xCBF29CE484222325)
    for j in range(n):
        h = (h ^ np.uint64(s[j])) * np.uint64(0x100000001B3)
    return _mix64(h)


@njit(cache=True, inline="always")
def _key_pair(a, b):
    return _mix64(_mix64(a) ^ (np.uint64(b) + np.uint64(0x9E3779B97F4A7C15)))


def key_from_python(value, ftype: str) -> int:
    """The u64 encoding of a Python value of schema type ``ftype`` (u32, i64, bytes8, ...)."""
    if ftype.startswith("bytes"):
        if isinstance(value, str):
            value = value.encode()
        n = int(ftype[5:])
        if len(value) > n:
            raise ValueError(f"value {value!r} longer than {ftype}")
        return int(_key_bytes(np.frombuffer(value, dtype=np.uint8).copy(), n))
    v = int(value)
    return v & 0xFFFFFFFFFFFFFFFF
