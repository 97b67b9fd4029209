"""Account state table and the global halt cell.

Account state: a table (shm.features.table) whose payload word is the state, keyed by
one integer field. A key never set reads ACTIVE. The table never evicts (an evicted HALTED
account would silently become ACTIVE): when the probe window is full, ``set_state`` fails.

Global halt: word 0 of a small control array (one cache line, uint64[8]); 1 = halted.
Both are written by the admin plane (one writer at a time) and read by the kernels; the
next batch sees a change (release store here, acquire load in the kernel).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.features._atomics import _load_acquire, _store_release
from shm.features.table import ERR_FULL, PAYLOAD_OFF, _acquire, _find_locked, _recency, _unlock

ACTIVE, REDUCING, HALTED = 0, 1, 2
STATE_NAMES = {"ACTIVE": ACTIVE, "REDUCING": REDUCING, "HALTED": HALTED}
CONTROL_WORDS = 8
W_HALT = 0


@njit(cache=True)
def _read_state(t, capacity, slot_words, probe_len, key):
    b = _find_locked(t, key, capacity, slot_words, probe_len)
    if b < 0:
        return np.int64(ACTIVE)
    v = np.int64(t[b + PAYLOAD_OFF])
    _unlock(t, b, _recency(t, b))
    return v


@njit(cache=True)
def _set_state(t, capacity, slot_words, probe_len, key, state, now_ms):
    """Returns 0 or a negative table error (ERR_FULL, ERR_TIMEOUT)."""
    b, is_new = _acquire(t, key, capacity, slot_words, probe_len, True, False)
    if b < 0:
        return b
    t[b + PAYLOAD_OFF] = np.uint64(state)
    _unlock(t, b, now_ms)
    return 0


@njit(cache=True, inline="always")
def _halt_get(ctrl):
    # acquire: pairs with the admin's release store; read once per batch.
    return _load_acquire(ctrl, W_HALT) != 0


@njit(cache=True)
def _halt_set(ctrl, on):
    _store_release(ctrl, W_HALT, np.uint64(1 if on else 0))   # release: publish the halt


def new_control() -> np.ndarray:
    return np.zeros(CONTROL_WORDS, dtype=np.uint64)


def state_full_error(name: str, key: int) -> ValueError:
    return ValueError(f"state.{name}: table full, cannot set key={key} (raise capacity)")


_ = ERR_FULL
