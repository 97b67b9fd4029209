"""Byte copies of the ingress's kernels, written as loops LLVM vectorizes.

Numba checks a signed index for a negative value at every access (wraparound), so a loop
writing ``dst[doff + k] = src[soff + k]`` with offsets it cannot prove non-negative copies
one byte per iteration: about 1.4 ns per byte here, 5.9 us for the 4 KiB of a 64-event
request's decisions, 80 ns for a 128-byte ring slot. Indexing views of the two ranges with
the loop's own counter lets LLVM vectorize the loop: 0.3 us for the 4 KiB, 11 ns for the
slot (docs/BENCH.md, "Where the ingress's CPU goes at 32 x 64").
"""
from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always")
def copy_bytes(dst, doff, src, soff, n):
    """``dst[doff:doff + n] = src[soff:soff + n]`` (uint8 arrays or bytes; ``n`` >= 0, both
    ranges inside their arrays)."""
    d = dst[doff:doff + n]
    s = src[soff:soff + n]
    for k in range(n):
        d[k] = s[k]


@njit(cache=True, inline="always")
def zero_bytes(dst, doff, n):
    """``dst[doff:doff + n] = 0``."""
    d = dst[doff:doff + n]
    for k in range(n):
        d[k] = 0
