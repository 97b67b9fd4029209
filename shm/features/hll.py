"""HyperLogLog (Flajolet et al. 2007) over u8 registers, for njit code.

m = 2^p registers (p in 4..12). A value is hashed with splitmix64; the top p bits pick the
register, the rank is 1 + the number of leading zeros of the remaining bits. Estimate:
alpha_m m^2 / sum 2^-M[j], with linear counting m ln(m/V) when the raw estimate is
<= 2.5 m and V registers are zero. Relative standard error: 1.04 / sqrt(m)
(m=64: 13 %, m=256: 6.5 %, m=1024: 3.25 %, m=4096: 1.6 %). The documented bound, checked by
the tests: |estimate - n| <= 3 * 1.04/sqrt(m) * n (about 99.7 % of sketches). Small n is
far better than the bound (linear counting; collisions only when two values share a register).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from shm.features.table import _mix64


def std_error(m: int) -> float:
    return 1.04 / math.sqrt(m)


@njit(cache=True, inline="always")
def _hll_index_rank(value_u64, p):
    h = _mix64(value_u64)
    j = np.int64(h >> np.uint64(64 - p))
    w = (h << np.uint64(p)) | (np.uint64(1) << np.uint64(p - 1))   # guard: rank <= 65 - p
    rank = 1
    while (w & np.uint64(1 << 63)) == 0:
        rank += 1
        w <<= np.uint64(1)
    return j, rank


@njit(cache=True, inline="always")
def _hll_alpha(m):
    if m == 16:
        return 0.673
    if m == 32:
        return 0.697
    if m == 64:
        return 0.709
    return 0.7213 / (1.0 + 1.079 / m)


@njit(cache=True, inline="always")
def _hll_finish(inv_sum, zeros, m):
    e = _hll_alpha(m) * m * m / inv_sum
    if e <= 2.5 * m and zeros > 0:
        e = m * math.log(m / zeros)
    return e


@njit(cache=True)
def _hll_add_many(regs, p, values):
    """Add each u64 of ``values`` to the single sketch ``regs`` (uint8[2^p])."""
    for v in values:
        j, r = _hll_index_rank(np.uint64(v), p)
        if regs[j] < r:
            regs[j] = r


@njit(cache=True)
def _hll_estimate(regs):
    m = regs.shape[0]
    s = 0.0
    zeros = 0
    for j in range(m):
        r = regs[j]
        s += 1.0 / float(np.uint64(1) << np.uint64(r))
        zeros += r == 0
    return _hll_finish(s, zeros, m)
