"""njit read/update primitives for the window kinds count, sum, avg, min, max (distinct:
shm.features.distinct, age and last: shm.features.scalar).

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
from shm.features.table import (C_LATE, PAYLOAD_OFF, _acquire, _find_locked, _recency,
                                _unlock)

OK = 0
LATE = 1
K_COUNT, K_SUM, K_AVG, K_MIN, K_MAX = 0, 1, 2, 3, 4
NAN = np.nan
INF = np.inf


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
