"""Fixed-size open-addressing hash table over a caller-given uint64 buffer.

This module is the one place that owns the table layout: nothing else computes an offset
into a table buffer except through ``SLOT_BASE`` / ``_slot_word`` and the payload offsets
that each kind declares in ``shm.features.layout``. ``TABLE_HEADER`` and ``SLOT_HEAD`` are
the descriptors (shm.descriptor); the word constants below are derived from them.

Buffer layout (all words are u64, little-endian, x86-64 only)::

    word 0         magic 'RFTABLE1'
    word 1         layout version
    word 2         capacity (slots)
    word 3         slot_words (u64 words per slot)
    word 8         counter: occupied slots (fill)       \
    word 16        counter: evictions                    |  one 64 B cache line each,
    word 24        counter: late events dropped          |  updated with atomic add,
    word 32        counter: lock timeouts                |  read by any process
    word 40        counter: table full (no eviction)    /
    word 48        reserved: two cache lines
    word 64        stripe locks: N_STRIPES x 8 words (one cache line each)
    SLOT_BASE      slot 0, slot 1, ... capacity slots of slot_words words

    slot (slot_words x 8 B):
    +--------+--------------------------------------+----------------------------+
    | key u64| meta u64                             | payload (kind-specific)    |
    |        | b63 LOCK | b62 USED | b0..61 recency |                            |
    +--------+--------------------------------------+----------------------------+

meta == 0 means the slot was never used. A slot never becomes empty again (eviction
replaces the key in place), so a probe that meets an empty slot knows the key is absent.
``recency`` is the slot's last-seen time in the kind's own unit (the window head epoch, or
milliseconds); eviction picks the smallest recency among the ``probe_len`` slots of the
probe window (least recently seen).

Concurrency (several processes map the same buffer):
- A slot is locked by CAS of meta from ``m`` to ``m | LOCK`` and unlocked by a release
  store of ``USED | recency``; every payload read or write happens while the slot is locked.
- Inserting a key (claiming an empty slot or evicting one) happens under the key's stripe
  lock, so two processes cannot insert the same key twice. Lock order: stripe, then slot.
- Spins are bounded (``MAX_SPINS``); on timeout a call returns ``ERR_TIMEOUT`` and counts it.
  A process killed while holding a lock leaves it held: recovery rebuilds the tables.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.descriptor import CACHE_LINE_BYTES, WORD_BYTES, Builder
from shm.features._atomics import _cas, _fetch_add, _load_acquire, _pause, _prefetch, _store_release

MAGIC = 0x31454C4241544652          # b'RFTABLE1' little-endian
VERSION = 1
N_STRIPES = 256
COUNTERS = ("fill", "evictions", "late_dropped", "lock_timeouts", "full")
# Each counter and each stripe lock owns a cache line: processes update them with atomics.
_h = Builder("feature table header")
for _name in ("magic", "version", "capacity", "slot_words"):
    _h.field(_name, fmt=np.uint64)
for _name in COUNTERS:
    _h.field(_name, fmt=np.uint64, align=CACHE_LINE_BYTES)
_h.reserve(2 * CACHE_LINE_BYTES, align=CACHE_LINE_BYTES)
_h.field("stripes", N_STRIPES * CACHE_LINE_BYTES, align=CACHE_LINE_BYTES)
TABLE_HEADER = _h.build(align=CACHE_LINE_BYTES)
del _h, _name
SLOT_HEAD = Builder("feature slot head").field("key", fmt=np.uint64).field("meta", fmt=np.uint64).build()

W_MAGIC, W_VERSION, W_CAPACITY, W_SLOT_WORDS = (TABLE_HEADER.word(n) for n in ("magic", "version",
                                                                               "capacity", "slot_words"))
C_FILL, C_EVICTIONS, C_LATE, C_TIMEOUTS, C_FULL = (TABLE_HEADER.word(n) for n in COUNTERS)
COUNTER_NAMES = {name: TABLE_HEADER.word(name) for name in COUNTERS}
STRIPE_BASE = TABLE_HEADER.word("stripes")
STRIPE_STRIDE = CACHE_LINE_BYTES // WORD_BYTES
SLOT_BASE = TABLE_HEADER.words      # 2112 words = 16896 B (64 B multiple)
HEADER_BYTES = TABLE_HEADER.size
KEY_OFF, META_OFF, PAYLOAD_OFF = SLOT_HEAD.word("key"), SLOT_HEAD.word("meta"), SLOT_HEAD.words

LOCK = np.uint64(1 << 63)
USED = np.uint64(1 << 62)
REC_MASK = np.uint64((1 << 62) - 1)
MAX_TIME_MS = (1 << 62) - 1         # event times are clamped to [0, MAX_TIME_MS] (featureset)
MAX_SPINS = 1 << 22                 # about 10-40 ms of PAUSE: only a dead lock holder hits it

# status codes (>= 0 is a slot base word)
ERR_NOT_FOUND = -1
ERR_TIMEOUT = -2
ERR_FULL = -3


def table_words(capacity: int, slot_words: int) -> int:
    """Words needed for a table of ``capacity`` slots of ``slot_words`` words."""
    return SLOT_BASE + capacity * slot_words


def init_table(buf: np.ndarray, capacity: int, slot_words: int) -> None:
    """Write the header of a fresh (zeroed) buffer. Raises on a size mismatch."""
    need = table_words(capacity, slot_words)
    if buf.dtype != np.uint64 or buf.ndim != 1 or buf.shape[0] < need:
        raise ValueError(f"table buffer: need uint64[{need}], got {buf.dtype}[{buf.shape}]")
    if not 1 <= capacity < (1 << 32):
        raise ValueError(f"table capacity={capacity}: must be in [1, 2^32)")
    buf[W_MAGIC] = MAGIC
    buf[W_VERSION] = VERSION
    buf[W_CAPACITY] = capacity
    buf[W_SLOT_WORDS] = slot_words


def check_table(buf: np.ndarray, capacity: int, slot_words: int) -> None:
    """Validate an attached buffer (e.g. mapped by another process) against the spec."""
    if int(buf[W_MAGIC]) != MAGIC or int(buf[W_VERSION]) != VERSION:
        raise ValueError("table buffer: bad magic or version (not initialised?)")
    if int(buf[W_CAPACITY]) != capacity or int(buf[W_SLOT_WORDS]) != slot_words:
        raise ValueError(f"table buffer: capacity={int(buf[W_CAPACITY])} slot_words="
                         f"{int(buf[W_SLOT_WORDS])}, spec wants {capacity}/{slot_words}")


def counters(buf: np.ndarray) -> dict:
    """Snapshot of the table counters plus ``fill_ratio`` (plain loads: a monitoring view)."""
    out = {name: int(buf[w]) for name, w in COUNTER_NAMES.items()}
    out["capacity"] = int(buf[W_CAPACITY])
    out["fill_ratio"] = out["fill"] / max(1, out["capacity"])
    return out


@njit(cache=True, inline="always")
def _mix64(x):
    """splitmix64 finalizer: a bijective 64-bit mix (hash of a key or value)."""
    x = np.uint64(x)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _home(key, capacity):
    """Home slot of a key: fastrange of the high 32 hash bits (any capacity < 2^32)."""
    return np.int64(((_mix64(key) >> np.uint64(32)) * np.uint64(capacity)) >> np.uint64(32))


@njit(cache=True, inline="always")
def _slot_word(s, slot_words):
    return SLOT_BASE + s * slot_words


@njit(cache=True, inline="always")
def _unlock(t, b, recency):
    # release: the payload stores made under the lock are visible before the unlocked meta.
    _store_release(t, b + META_OFF, USED | (np.uint64(recency) & REC_MASK))


@njit(cache=True)
def _lock_stripe(t, key):
    w = STRIPE_BASE + np.int64(_mix64(key) & np.uint64(N_STRIPES - 1)) * STRIPE_STRIDE
    spins = 0
    while _cas(t, w, 0, 1) != 0:        # seq_cst CAS: acquire for the insertion section
        spins += 1
        if spins > MAX_SPINS:
            return -1
        _pause()
    return w


@njit(cache=True)
def _find_locked(t, key, capacity, slot_words, probe_len):
    """Lock the slot holding ``key``. Returns its base word, ERR_NOT_FOUND or ERR_TIMEOUT."""
    home = _home(key, capacity)
    key = np.uint64(key)
    restarts = 0
    i = 0
    spins = 0
    while i < probe_len:
        s = home + i
        if s >= capacity:
            s -= capacity
        b = _slot_word(s, slot_words)
        m = _load_acquire(t, b + META_OFF)  # acquire: the key read below is the published one
        if m == 0:
            return ERR_NOT_FOUND
        if m & LOCK:
            spins += 1
            if spins > MAX_SPINS:
                _fetch_add(t, C_TIMEOUTS, 1)
                return ERR_TIMEOUT
            _pause()
            continue
        if t[b + KEY_OFF] != key:
            i += 1
            continue
        if _cas(t, b + META_OFF, m, m | LOCK) == m:
            if t[b + KEY_OFF] == key:   # stable: the key only changes under the lock
                return b
            _store_release(t, b + META_OFF, m)   # evicted meanwhile: unlock and rescan
            restarts += 1
            if restarts > MAX_SPINS:
                _fetch_add(t, C_TIMEOUTS, 1)
                return ERR_TIMEOUT
            i = 0
    return ERR_NOT_FOUND


@njit(cache=True)
def _insert_locked(t, key, capacity, slot_words, probe_len, evict):
    """Under the key's stripe lock: find, claim an empty slot, or evict the least recently
    seen slot of the probe window (only if ``evict``). Returns (base word or error, is_new).
    A new slot has key set and payload zeroed; the caller initialises and unlocks it."""
    w = _lock_stripe(t, key)
    if w < 0:
        return ERR_TIMEOUT, False
    home = _home(key, capacity)
    key = np.uint64(key)
    result = ERR_TIMEOUT
    is_new = False
    spins = 0
    i = 0
    victim = -1
    victim_m = np.uint64(0)
    while True:
        if i == probe_len:
            if not evict or victim < 0:
                result = ERR_FULL
                break
            b = _slot_word(victim, slot_words)
            if _cas(t, b + META_OFF, victim_m, victim_m | LOCK) != victim_m:
                i = 0                   # victim touched meanwhile: rescan the window
                victim = -1
                continue
            t[b + KEY_OFF] = key
            for j in range(PAYLOAD_OFF, slot_words):
                t[b + j] = 0
            _fetch_add(t, C_EVICTIONS, 1)
            result = b
            is_new = True
            break
        s = home + i
        if s >= capacity:
            s -= capacity
        b = _slot_word(s, slot_words)
        m = _load_acquire(t, b + META_OFF)
        if m & LOCK:
            spins += 1
            if spins > MAX_SPINS:
                break
            _pause()
            continue
        if m == 0:
            if _cas(t, b + META_OFF, 0, LOCK) == 0:
                t[b + KEY_OFF] = key
                for j in range(PAYLOAD_OFF, slot_words):
                    t[b + j] = 0
                _fetch_add(t, C_FILL, 1)
                result = b
                is_new = True
                break
            continue                    # lost the race for this slot: look at it again
        if t[b + KEY_OFF] == key:
            if _cas(t, b + META_OFF, m, m | LOCK) == m:
                result = b              # nobody else inserts this key: no re-check needed
                break
            continue
        rec = m & REC_MASK
        if victim < 0 or rec < victim_m & REC_MASK:
            victim = s
            victim_m = m
        i += 1
    _store_release(t, w, 0)             # release the stripe: the claimed slot is locked
    if result == ERR_TIMEOUT:
        _fetch_add(t, C_TIMEOUTS, 1)
    elif result == ERR_FULL:
        _fetch_add(t, C_FULL, 1)
    return result, is_new


@njit(cache=True)
def _acquire(t, key, capacity, slot_words, probe_len, create, evict):
    """Lock the key's slot, inserting it if ``create``. Returns (base word or error, is_new)."""
    b = _find_locked(t, key, capacity, slot_words, probe_len)
    if b >= 0 or b == ERR_TIMEOUT or not create:
        return b, False
    return _insert_locked(t, key, capacity, slot_words, probe_len, evict)


@njit(cache=True, inline="always")
def _recency(t, b):
    return np.int64(t[b + META_OFF] & REC_MASK)


@njit(cache=True, inline="always")
def _prefetch_key(t, key, capacity, slot_words):
    """Prefetch the key's home slot (up to its first 8 cache lines) ahead of a read/update:
    a batch kernel calls it for every event first, so the misses of a batch overlap."""
    b = _slot_word(_home(key, capacity), slot_words)
    for w in range(0, min(slot_words, 64), 8):
        _prefetch(t, b + w)


@njit(cache=True, inline="always")
def _prefetch_slot(t, key, capacity, slot_words, probe_len):
    """Second prefetch stage, after ``_prefetch_key`` has brought in the home slots of a
    batch: walk the key's probe sequence with plain loads (a hint only: no lock, no ordering,
    the real lookup repeats it under the lock) and prefetch every line of the slot that holds
    the key, or of the first empty slot an insertion would claim. Without it a key one or
    more slots past its home (half the keys at fill 0.67) cost a serialised DRAM miss in the
    locked lookup; here the misses of different events overlap (no atomic between them)."""
    home = _home(key, capacity)
    key = np.uint64(key)
    b = _slot_word(home, slot_words)
    for i in range(probe_len):
        s = home + i
        if s >= capacity:
            s -= capacity
        b = _slot_word(s, slot_words)
        if t[b + KEY_OFF] == key or t[b + META_OFF] == 0:
            break
    for w in range(0, min(slot_words, 64), 8):
        _prefetch(t, b + w)
    _prefetch(t, b + slot_words - 1)    # the last line: a straddling slot's tail, or the
                                        # window registers at the end of a distinct slot
