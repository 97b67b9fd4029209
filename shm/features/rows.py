"""Whole rows of a feature table, for moving one partition's state between machines
(engine.cluster.partstate): copy rows out, empty them, put rows in. Not on the hot path.

A row is a slot's words: key, recency (the meta without its flag bits), payload. Every row is
read and written under its slot lock, so workers updating other keys (and evicting, which may
pick any slot of a probe window) run on meanwhile.

Emptying instead of deleting: a slot never becomes empty again (table.py: a probe stops at an
empty slot, so freeing one would hide the keys after it). An emptied row keeps its key with
recency 0 and the kind's empty payload, which reads and updates exactly as an absent key does
(count, sum, avg, distinct: zeros; min +inf, max -inf per bucket; age: first seen at
MAX_TIME_MS; last: NaN), and is the first victim of an eviction in its probe window.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.features.table import (ERR_NOT_FOUND, KEY_OFF, MAX_TIME_MS, META_OFF, PAYLOAD_OFF, REC_MASK,
                                SLOT_BASE, USED, _acquire, _find_locked, _unlock)


def used_keys(t: np.ndarray, capacity: int, slot_words: int) -> np.ndarray:
    """Keys of the used slots (plain loads: a hint; the calls below re-find each key locked)."""
    slots = t[SLOT_BASE:SLOT_BASE + capacity * slot_words].reshape(capacity, slot_words)
    return slots[(slots[:, META_OFF] & USED) != 0, KEY_OFF].copy()


def empty_payload(kind: str, nbuckets: int, slot_words: int) -> np.ndarray:
    """The payload words of an absent key (module doc)."""
    p = np.zeros(slot_words - PAYLOAD_OFF, np.uint64)
    f = p.view(np.float64)
    if kind == "min":
        f[:nbuckets] = np.inf
    elif kind == "max":
        f[:nbuckets] = -np.inf
    elif kind == "age":
        p[0] = MAX_TIME_MS
    elif kind == "last":
        f[0] = np.nan
    return p


@njit(cache=True)
def copy_rows(t, capacity, slot_words, probe_len, keys, out):
    """out[i] = the row of keys[i], each copied under its lock; returns how many were found
    (the rows found first, in keys' order); a negative table error on a lock timeout."""
    n = 0
    for i in range(keys.shape[0]):
        b = _find_locked(t, keys[i], capacity, slot_words, probe_len)
        if b == ERR_NOT_FOUND:
            continue                    # evicted since the scan
        if b < 0:
            return b
        rec = t[b + META_OFF] & REC_MASK
        for j in range(slot_words):
            out[n, j] = t[b + j]
        out[n, META_OFF] = rec
        _unlock(t, b, rec)
        n += 1
    return n


@njit(cache=True)
def empty_rows(t, capacity, slot_words, probe_len, keys, payload):
    """Empty the rows of ``keys`` (module doc); returns how many, or a table error."""
    n = 0
    for i in range(keys.shape[0]):
        b = _find_locked(t, keys[i], capacity, slot_words, probe_len)
        if b == ERR_NOT_FOUND:
            continue
        if b < 0:
            return b
        for j in range(payload.shape[0]):
            t[b + PAYLOAD_OFF + j] = payload[j]
        _unlock(t, b, 0)
        n += 1
    return n


@njit(cache=True)
def put_rows(t, capacity, slot_words, probe_len, rows):
    """Write each row (its key's slot found or inserted, evicting as an update would);
    returns how many, or the first table error (ERR_FULL, ERR_TIMEOUT)."""
    for i in range(rows.shape[0]):
        b, is_new = _acquire(t, rows[i, KEY_OFF], capacity, slot_words, probe_len, True, True)
        if b < 0:
            return b
        for j in range(PAYLOAD_OFF, slot_words):
            t[b + j] = rows[i, j]
        _unlock(t, b, rows[i, META_OFF] & REC_MASK)
    return rows.shape[0]

