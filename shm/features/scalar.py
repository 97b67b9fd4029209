"""njit primitives for the scalar kinds: age (seconds since first seen) and last (value).

age:  payload word = first-seen ms (i64); meta recency = last-seen ms.
      read = (now - min(first, now)) // 1000 including the current event (0 when new).
      An out-of-order event moves first-seen back (first = min over committed events).
last: payload word = last value (f64); meta recency = that value's event time ms.
      read = the value stored BEFORE the current event (NaN if none): a "last" that
      included the current event would just be the event's own field.
      An event older than the stored one does not replace it (LATE, counted).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.features._atomics import _fetch_add
from shm.features.table import C_LATE, PAYLOAD_OFF, _acquire, _find_locked, _recency, _unlock

OK = 0
LATE = 1


@njit(cache=True)
def _read_age(t, capacity, slot_words, probe_len, key, now_ms):
    b = _find_locked(t, key, capacity, slot_words, probe_len)
    if b < 0:
        return np.int64(0)
    first = np.int64(t[b + PAYLOAD_OFF])
    _unlock(t, b, _recency(t, b))
    return max(np.int64(0), now_ms - first) // 1000


@njit(cache=True)
def _update_age(t, capacity, slot_words, probe_len, key, now_ms):
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        return b
    if is_new:
        t[b + PAYLOAD_OFF] = np.uint64(now_ms)
        _unlock(t, b, now_ms)
        return OK
    first = np.int64(t[b + PAYLOAD_OFF])
    if now_ms < first:
        t[b + PAYLOAD_OFF] = np.uint64(now_ms)
    _unlock(t, b, max(_recency(t, b), now_ms))
    return OK


@njit(cache=True)
def _read_last(t, capacity, slot_words, probe_len, key, now_ms):
    tf = t.view(np.float64)
    b = _find_locked(t, key, capacity, slot_words, probe_len)
    if b < 0:
        return np.nan
    v = tf[b + PAYLOAD_OFF]
    _unlock(t, b, _recency(t, b))
    return v


@njit(cache=True)
def _update_last(t, capacity, slot_words, probe_len, key, now_ms, value):
    tf = t.view(np.float64)
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        return b
    rec = _recency(t, b)
    if not is_new and now_ms < rec:
        _unlock(t, b, rec)
        _fetch_add(t, C_LATE, 1)
        return LATE
    tf[b + PAYLOAD_OFF] = value
    _unlock(t, b, now_ms)
    return OK


@njit(cache=True)
def _read_update_age(t, capacity, slot_words, probe_len, key, now_ms):
    """_read_age then _update_age under one lock (for ``update: always``)."""
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        return np.int64(0)
    first = now_ms if is_new else min(np.int64(t[b + PAYLOAD_OFF]), now_ms)
    t[b + PAYLOAD_OFF] = np.uint64(first)
    _unlock(t, b, now_ms if is_new else max(_recency(t, b), now_ms))
    return (now_ms - first) // 1000


@njit(cache=True)
def _read_update_last(t, capacity, slot_words, probe_len, key, now_ms, value):
    """_read_last then _update_last under one lock (for ``update: always``)."""
    tf = t.view(np.float64)
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, True)
    if b < 0:
        return np.nan
    prev = np.nan if is_new else tf[b + PAYLOAD_OFF]
    rec = _recency(t, b)
    if not is_new and now_ms < rec:
        _unlock(t, b, rec)
        _fetch_add(t, C_LATE, 1)
        return prev
    tf[b + PAYLOAD_OFF] = value
    _unlock(t, b, now_ms)
    return prev
