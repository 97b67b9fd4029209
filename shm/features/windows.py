"""njit read/update primitives for every feature kind.

Contract for all kinds (see docs/FEATURES.md):
- ``_read_<kind>(t, capacity, slot_words, probe_len, ..., key, now_ms, value)`` returns the
  feature value *including the current event* (it does not modify the table; it is exactly
  the value an immediate ``_read`` would give after ``_update`` with the same event).
  Exception: ``last`` reads the value stored *before* the current event (NaN if none).
- ``_update_<kind>(...)`` commits the event; returns OK (0), LATE (1: too old, ignored) or a
  negative table error (ERR_TIMEOUT, ERR_FULL), counted in the table header.
- Windows are bucketed: epoch(t) = t_ms // bucket_ms; the window at time t covers the
  events whose epoch is in (epoch(t) - nb, epoch(t)]. The table's time is its head epoch
  (the largest epoch committed for that key). Late events: an event with epoch below the
  head is added to its own bucket if that bucket is still inside the head's window, else it
  is dropped (LATE, counted). A read is evaluated at max(head, epoch(event)).
- now_ms must be >= 0 (the caller clamps).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.features._atomics import _fetch_add
from shm.features.hll import _hll_finish, _hll_index_rank
from shm.features.table import (C_LATE, PAYLOAD_OFF, _acquire, _find_locked, _recency,
                                   _unlock)

OK = 0
LATE = 1
K_COUNT, K_SUM, K_AVG, K_MIN, K_MAX = 0, 1, 2, 3, 4
NAN = np.nan
INF = np.inf
_INV_POW2 = np.array([2.0 ** -r for r in range(72)])     # HLL: 2^-rank, rank <= 65 - p
_HIGH_BITS = np.uint64(0x8080808080808080)
_LOW_BITS = np.uint64(0x0101010101010101)


@njit(cache=True, inline="always")
def _identity(kind):
    if kind == K_MIN:
        return INF
    if kind == K_MAX:
        return -INF
    return 0.0


@njit(cache=True, inline="always")
def _reset_bucket(t, t32, tf, b, kind, nb, i):
    p = b + PAYLOAD_OFF
    if kind == K_COUNT:
        t32[2 * p + i] = 0
    elif kind == K_AVG:
        tf[p + i] = 0.0
        t32[2 * (p + nb) + i] = 0
    else:
        tf[p + i] = _identity(kind)


@njit(cache=True, inline="always")
def _sum_u32(a, start, n):
    s = np.int64(0)
    for j in range(start, start + n):
        s += a[j]
    return s


@njit(cache=True, inline="always")
def _win_fold_locked(t32, tf, b, kind, nb, lo, head):
    """Aggregate the buckets of epochs lo..head of a locked slot -> (acc, count)."""
    acc = _identity(kind)
    cnt = 0.0
    p = b + PAYLOAD_OFF
    # valid epochs lo..head, as at most two contiguous index runs (no modulo per bucket)
    n_valid = max(0, head - lo + 1)
    i0 = lo % nb if n_valid > 0 else 0
    i1 = min(nb, i0 + n_valid)
    if kind == K_COUNT:
        return float(_sum_u32(t32, 2 * p + i0, i1 - i0) + _sum_u32(t32, 2 * p, n_valid - (i1 - i0))), cnt
    for k in range(n_valid):
        i = i0 + k if i0 + k < i1 else i0 + k - nb
        if kind == K_SUM:
            acc += tf[p + i]
        elif kind == K_AVG:
            acc += tf[p + i]
            cnt += t32[2 * (p + nb) + i]
        elif kind == K_MIN:
            acc = min(acc, tf[p + i])
        else:
            acc = max(acc, tf[p + i])
    return acc, cnt


@njit(cache=True, inline="always")
def _win_add(acc, cnt, kind, value):
    if kind == K_COUNT:
        return acc + 1.0, cnt
    if kind == K_SUM:
        return acc + value, cnt
    if kind == K_AVG:
        return acc + value, cnt + 1.0
    if kind == K_MIN:
        return min(acc, value), cnt
    return max(acc, value), cnt


@njit(cache=True, inline="always")
def _win_finish(acc, cnt, kind):
    if kind == K_AVG:
        return acc / cnt if cnt > 0 else NAN
    if (kind == K_MIN or kind == K_MAX) and (acc == INF or acc == -INF):
        return NAN
    return acc


@njit(cache=True, inline="always")
def _win_apply_locked(t, t32, tf, b, is_new, kind, nb, e, value):
    """Commit one event of epoch e to a locked slot -> (new head, OK | LATE)."""
    p = b + PAYLOAD_OFF
    if is_new:
        head = e
        if kind == K_MIN or kind == K_MAX:
            for i in range(nb):
                tf[p + i] = _identity(kind)
    else:
        head = _recency(t, b)
    if e > head:
        first = max(head + 1, e - nb + 1)
        i = first % nb
        for _ in range(first, e + 1):
            _reset_bucket(t, t32, tf, b, kind, nb, i)
            i = i + 1 if i + 1 < nb else 0
        head = e
    elif e <= head - nb:
        return head, LATE
    i = e % nb
    if kind == K_COUNT:
        t32[2 * p + i] += 1
    elif kind == K_SUM:
        tf[p + i] += value
    elif kind == K_AVG:
        tf[p + i] += value
        t32[2 * (p + nb) + i] += 1
    elif kind == K_MIN:
        tf[p + i] = min(tf[p + i], value)
    else:
        tf[p + i] = max(tf[p + i], value)
    return head, OK


@njit(cache=True, inline="always")
def _win_read(t, capacity, slot_words, probe_len, kind, nb, bucket_ms, key, now_ms, value):
    """Generic window read (kind: K_COUNT..K_MAX); count is returned as a float."""
    t32 = t.view(np.uint32)
    tf = t.view(np.float64)
    e = now_ms // bucket_ms
    acc = _identity(kind)
    cnt = 0.0
    b = _find_locked(t, key, capacity, slot_words, probe_len)
    eff = e
    if b >= 0:
        head = _recency(t, b)
        eff = max(head, e)
        acc, cnt = _win_fold_locked(t32, tf, b, kind, nb, max(eff - nb + 1, head - nb + 1), head)
        _unlock(t, b, head)
    if e > eff - nb:                    # the current event is inside the window
        acc, cnt = _win_add(acc, cnt, kind, value)
    return _win_finish(acc, cnt, kind)


@njit(cache=True, inline="always")
def _win_update(t, capacity, slot_words, probe_len, kind, nb, bucket_ms, key, now_ms, value):
    t32 = t.view(np.uint32)
    tf = t.view(np.float64)
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        return b
    head, rc = _win_apply_locked(t, t32, tf, b, is_new, kind, nb, now_ms // bucket_ms, value)
    _unlock(t, b, head)                 # release: bucket stores before the unlocked meta
    if rc == LATE:
        _fetch_add(t, C_LATE, 1)
    return rc


@njit(cache=True, inline="always")
def _win_read_update(t, capacity, slot_words, probe_len, kind, nb, bucket_ms, key, now_ms, value):
    """Update then read under one lock: the same value as _win_read followed by _win_update,
    for features with ``update: always`` (the decision cannot change the update)."""
    t32 = t.view(np.uint32)
    tf = t.view(np.float64)
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        acc, cnt = _win_add(_identity(kind), 0.0, kind, value)
        return _win_finish(acc, cnt, kind)
    head, rc = _win_apply_locked(t, t32, tf, b, is_new, kind, nb, now_ms // bucket_ms, value)
    acc, cnt = _win_fold_locked(t32, tf, b, kind, nb, head - nb + 1, head)
    _unlock(t, b, head)
    if rc == LATE:
        _fetch_add(t, C_LATE, 1)
    return _win_finish(acc, cnt, kind)


# --- named entry points the rule compiler emits (kind folded by inlining) -------------------

@njit(cache=True)
def _read_count(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return np.int64(_win_read(t, capacity, slot_words, probe_len, K_COUNT, nb, bucket_ms, key, now_ms, value))


@njit(cache=True)
def _read_update_count(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return np.int64(_win_read_update(t, capacity, slot_words, probe_len, K_COUNT, nb, bucket_ms, key, now_ms, value))


@njit(cache=True)
def _update_count(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_update(t, capacity, slot_words, probe_len, K_COUNT, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_sum(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read(t, capacity, slot_words, probe_len, K_SUM, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_update_sum(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read_update(t, capacity, slot_words, probe_len, K_SUM, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _update_sum(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_update(t, capacity, slot_words, probe_len, K_SUM, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_avg(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read(t, capacity, slot_words, probe_len, K_AVG, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_update_avg(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read_update(t, capacity, slot_words, probe_len, K_AVG, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _update_avg(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_update(t, capacity, slot_words, probe_len, K_AVG, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_min(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read(t, capacity, slot_words, probe_len, K_MIN, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_update_min(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read_update(t, capacity, slot_words, probe_len, K_MIN, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _update_min(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_update(t, capacity, slot_words, probe_len, K_MIN, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_max(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read(t, capacity, slot_words, probe_len, K_MAX, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _read_update_max(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_read_update(t, capacity, slot_words, probe_len, K_MAX, nb, bucket_ms, key, now_ms, value)


@njit(cache=True)
def _update_max(t, capacity, slot_words, probe_len, nb, bucket_ms, key, now_ms, value):
    return _win_update(t, capacity, slot_words, probe_len, K_MAX, nb, bucket_ms, key, now_ms, value)


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
