"""njit read/update primitives of the ``distinct`` window kind: one HyperLogLog of m = 2^p
u8 registers per bucket, merged over the window's buckets at read time. The contract of
every window kind (shm.features.windows) holds here too."""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.features._atomics import _fetch_add
from shm.features.hll import _hll_finish, _hll_index_rank
from shm.features.table import C_LATE, PAYLOAD_OFF, _acquire, _find_locked, _recency, _unlock
from shm.features.windows import LATE, OK

_INV_POW2 = np.array([2.0 ** -r for r in range(72)])     # HLL: 2^-rank, rank <= 65 - p
_HIGH_BITS = np.uint64(0x8080808080808080)
_LOW_BITS = np.uint64(0x0101010101010101)


# --- distinct: one HyperLogLog of m = 2^p u8 registers per bucket ---------------------------

@njit(cache=True, inline="always")
def _hll_window_estimate(t, base, m, nb, lo, head, jc, rc):
    """Estimate of the register-wise max over the buckets of epochs lo..head (slot payload at
    byte ``base`` of the u64 table ``t``; base < 0: no slot) and, if jc >= 0, the value
    (jc, rc). Eight registers at a time: one word per bucket, a SWAR byte max (ranks are
    below 128), then a table of 2^-r instead of a division per register (4x faster than
    register by register, bench: python -m bench.features --distinct)."""
    n_valid = max(0, head - lo + 1) if base >= 0 else 0
    i0 = lo % nb if n_valid > 0 else 0
    w0 = base // 8
    mw = m // 8                                  # m = 2^p >= 16: whole words per bucket
    s = 0.0
    zeros = 0
    for w in range(mw):
        acc = np.uint64(0)
        i = i0
        for _ in range(n_valid):
            acc = _bytes_max(acc, t[w0 + i * mw + w])
            i = i + 1 if i + 1 < nb else 0
        if jc >= 0 and jc >> 3 == w:             # the current event's register
            sh = np.uint64(8 * (jc & 7))
            if np.int64((acc >> sh) & np.uint64(0xFF)) < rc:
                acc = (acc & ~(np.uint64(0xFF) << sh)) | (np.uint64(rc) << sh)
        nonzero = (((acc | _HIGH_BITS) - _LOW_BITS) & _HIGH_BITS) >> np.uint64(7)
        zeros += 8 - np.int64((nonzero * _LOW_BITS) >> np.uint64(56))
        s += ((_inv(acc, 0) + _inv(acc, 1)) + (_inv(acc, 2) + _inv(acc, 3))) + \
            ((_inv(acc, 4) + _inv(acc, 5)) + (_inv(acc, 6) + _inv(acc, 7)))
    return np.int64(round(_hll_finish(s, zeros, m)))


@njit(cache=True, inline="always")
def _inv(word, k):
    """2^-r for the rank r in byte k of ``word``."""
    return _INV_POW2[np.int64((word >> np.uint64(8 * k)) & np.uint64(0xFF))]


@njit(cache=True, inline="always")
def _bytes_max(a, b):
    """Byte-wise max of two words whose bytes are all below 128: (a | 0x80..) - b has the top
    bit of a byte set exactly where a's byte >= b's (no borrow crosses a byte)."""
    ge = (((a | _HIGH_BITS) - b) & _HIGH_BITS) >> np.uint64(7)
    mask = ge * np.uint64(0xFF)
    return (a & mask) | (b & ~mask)


@njit(cache=True, inline="always")
def _hll_apply_locked(t, t8, b, is_new, nb, m, p, e, value_u64):
    """Commit one value of epoch e to a locked distinct slot -> (new head, OK | LATE). Keeps
    the window registers (after the nb buckets) equal to the register-wise max of the
    buckets: raised with each value; recomputed when the head moves and buckets leave."""
    base = 8 * (b + PAYLOAD_OFF)
    head = e if is_new else _recency(t, b)
    if e > head:
        first = max(head + 1, e - nb + 1)
        i = first % nb
        for _ in range(first, e + 1):
            o = base + i * m
            for j in range(m):
                t8[o + j] = 0
            i = i + 1 if i + 1 < nb else 0
        head = e
        _hll_merge_buckets(t, base, m, nb)
    elif e <= head - nb:
        return head, LATE
    j, r = _hll_index_rank(np.uint64(value_u64), p)
    o = base + (e % nb) * m + j
    if t8[o] < r:
        t8[o] = r
    o = base + nb * m + j
    if t8[o] < r:
        t8[o] = r
    return head, OK


@njit(cache=True, inline="always")
def _hll_merge_buckets(t, base, m, nb):
    """Window registers := register-wise max of the nb buckets (SWAR, a word at a time)."""
    w0 = base // 8
    mw = m // 8
    for w in range(mw):
        acc = np.uint64(0)
        for i in range(nb):
            acc = _bytes_max(acc, t[w0 + i * mw + w])
        t[w0 + nb * mw + w] = acc


@njit(cache=True, inline="always")
def _hll_merged_estimate(t, base, m, nb, jc, rc):
    """Estimate of the slot's window registers (and the value (jc, rc) if jc >= 0): the
    whole window at the slot's head, one register set instead of nb."""
    return _hll_window_estimate(t, base + nb * m, m, 1, 0, 0, jc, rc)


@njit(cache=True)
def _read_distinct(t, capacity, slot_words, probe_len, nb, bucket_ms, p, key, now_ms, value_u64):
    """Estimated distinct values in the window, including the current event's value."""
    e = now_ms // bucket_ms
    jc, rc = _hll_index_rank(np.uint64(value_u64), p)
    b = _find_locked(t, key, capacity, slot_words, probe_len)
    if b < 0:
        return _hll_window_estimate(t, -1, 1 << p, nb, e, e, jc, rc)
    head = _recency(t, b)
    if e <= head:                       # the window at the head: its registers
        if e <= head - nb:
            jc = -1                     # late beyond the window: not included
        est = _hll_merged_estimate(t, 8 * (b + PAYLOAD_OFF), 1 << p, nb, jc, rc)
    else:                               # ahead of the head: older buckets leave the window
        est = _hll_window_estimate(t, 8 * (b + PAYLOAD_OFF), 1 << p, nb,
                                   max(e - nb + 1, head - nb + 1), head, jc, rc)
    _unlock(t, b, head)
    return est


@njit(cache=True)
def _update_distinct(t, capacity, slot_words, probe_len, nb, bucket_ms, p, key, now_ms, value_u64):
    t8 = t.view(np.uint8)
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        return b
    head, rc = _hll_apply_locked(t, t8, b, is_new, nb, 1 << p, p, now_ms // bucket_ms, value_u64)
    _unlock(t, b, head)
    if rc == LATE:
        _fetch_add(t, C_LATE, 1)
    return rc


@njit(cache=True)
def _read_update_distinct(t, capacity, slot_words, probe_len, nb, bucket_ms, p, key, now_ms, value_u64):
    """_read_distinct then _update_distinct under one lock (for ``update: always``)."""
    t8 = t.view(np.uint8)
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        jc, rc = _hll_index_rank(np.uint64(value_u64), p)
        return _hll_window_estimate(t, -1, 1 << p, nb, 0, 0, jc, rc)
    head, rc = _hll_apply_locked(t, t8, b, is_new, nb, 1 << p, p, now_ms // bucket_ms, value_u64)
    est = _hll_merged_estimate(t, 8 * (b + PAYLOAD_OFF), 1 << p, nb, -1, 0)
    _unlock(t, b, head)
    if rc == LATE:
        _fetch_add(t, C_LATE, 1)
    return est
