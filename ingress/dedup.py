"""The idempotency window: a retry with the same (client id, request id) gets the first
decision, and is never evaluated twice (no feature counts an event twice).

Two tables:
- in flight: key -> the pending request; a retry arriving before the decision is attached
  to it and answered together with the first copy (a dict bounded by ingress.max_inflight);
- decided: the first decision's response slots, for ``dedup_window_s``, in preallocated
  arrays (ingress._dedup_kernels): at most ``max_entries`` requests and ``max_bytes`` of
  slots (64 B per event). Memory is fixed at start: nothing is allocated per request. When
  either bound is reached before entries expire, the oldest are forgotten early and counted
  (``evicted_early``, exported as risk_dedup_evicted_total): the window is then shorter than
  configured for that traffic and should be enlarged.

The cached decision is transport-neutral (response slots), so a retry is answered in its own
transport (binary or JSON), with DecisionFlag.DUPLICATE set. Each entry keeps a hash of the
request's record bytes without their padding, which the journal stores as zeros
(``records_hash``): a key reused for other events is a conflict
(ErrorCode.IDEMPOTENCY_CONFLICT), never answered with the other request's decision. The window lives in the ingress
process: an ingress restart forgets it (documented in docs/RELIABILITY.md).
"""
from __future__ import annotations

import numba
import numpy as np

from shm.journal_append import field_mask
from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag
from ingress import _dedup_kernels as K
from shm.ring import bind_entry

DEFAULT_MAX_ENTRIES = 1 << 18
DEFAULT_MAX_BYTES = 32 << 20           # 512k one-event decisions
_SLOT = RESPONSE_SLOT_DTYPE.itemsize
assert _SLOT == 64, "ingress._dedup_kernels counts events as bytes // 64"
_I64 = numba.types.int64
_ARR1 = numba.types.Array(numba.types.int64, 1, "C")
_ARR2 = numba.types.Array(numba.types.int64, 2, "C")
_U8 = numba.types.Array(numba.types.uint8, 1, "C")
_LOOKUP = bind_entry(K.lookup, (_ARR1, _ARR2, _I64, _I64, _I64, _I64, _I64, _I64))
_INSERT = bind_entry(K.insert, (_ARR1, _ARR1, _ARR2, _U8, _I64, _I64, _I64, _I64, _U8, _I64))
CONFLICT = "conflict"                  # decided_slots: the key was decided for other events
_TOP = 1 << 63


def i64_bits(x: int) -> int:
    """A u64 id as the int64 bit pattern the kernels store."""
    return x if x < _TOP else x - (1 << 64)


class IdempotencyWindow:
    def __init__(self, window_ns: int, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, meta: np.ndarray | None = None):
        """``meta``: optional int64 cells (K.META_WORDS) to keep the window's positions and
        its early-eviction counter in, e.g. the control block, where the exporter reads the
        counter; the positions are reset, the counter keeps counting."""
        if max_entries < 1 or max_bytes < _SLOT:
            raise ValueError(f"max_entries={max_entries} max_bytes={max_bytes}: need >= 1 and >= {_SLOT}")
        self.window_ns = window_ns
        self.inflight: dict[tuple[int, int], object] = {}
        cap, pool = _sizes(window_ns, max_entries, max_bytes)
        self.max_entries = cap
        self._meta = np.zeros(K.META_WORDS, np.int64) if meta is None else meta
        self._meta[[K.HEAD, K.TAIL, K.POOL_HEAD]] = 0
        self._index = np.full(2 * cap, -1, np.int64)
        self._ent = np.zeros((cap, K.ENT_WORDS), np.int64)
        self._pool = np.zeros(pool, np.uint8)
        for a in (self._ent, self._pool):      # fault every page in now: np.zeros maps them
            a.fill(0)                          # lazily, and RSS would grow for minutes as the
        self._ent[:, K.HSLOT] = -1             # FIFO and the pool are first written

    @staticmethod
    def memory_bytes(window_ns: int, max_entries: int, max_bytes: int) -> int:
        """What a window of these settings allocates (and faults in) at start."""
        cap, pool = _sizes(window_ns, max_entries, max_bytes)
        return 8 * (2 * cap + cap * K.ENT_WORDS) + pool

    @property
    def enabled(self) -> bool:
        return self.window_ns > 0

    @property
    def tables(self) -> tuple:
        """(meta, index, entries, pool): the window's arrays as ingress._dedup_kernels take
        them, for compiled code that looks up and inserts into this window (the fast path)."""
        return self._meta, self._index, self._ent, self._pool

    @property
    def evicted_early(self) -> int:
        """Decided requests forgotten before their window ended (entries or bytes full)."""
        return int(self._meta[K.EVICTED_EARLY])

    def __len__(self) -> int:
        """Decided requests remembered (expired ones included until they are dropped)."""
        return int(self._meta[K.HEAD] - self._meta[K.TAIL])

    def pending(self, key):
        """The in-flight request with this key, or None."""
        return self.inflight.get(key)

    def decided_slots(self, key, now_ns: int, n: int, rhash: int):
        """A copy of the first decision's slots flagged DUPLICATE, None when the key is not
        (or no longer) known, or CONFLICT when it was decided for other events (another
        count or another ``records_hash``): never another request's decision."""
        off = _LOOKUP(self._index, self._ent, self._pool.size, i64_bits(key[0]), i64_bits(key[1]),
                      now_ns, n, rhash)
        if off == K.CONFLICT:
            return CONFLICT
        if off < 0:
            return None
        slots = self._pool[off:off + n * _SLOT].view(RESPONSE_SLOT_DTYPE).copy()
        slots["flags"] |= np.uint8(DecisionFlag.DUPLICATE)
        return slots

    def start(self, key, pending) -> None:
        self.inflight[key] = pending

    def finish(self, key, slots: np.ndarray, now_ns: int, owner=None, rhash: int = 0) -> None:
        """Remember the decision: ``slots`` (RESPONSE_SLOT_DTYPE), or their bytes as a flat
        contiguous uint8 array (the ingress passes those: no conversion per request), of the
        request whose records hash to ``rhash`` (``records_hash``).
        ``owner``: the in-flight entry this request registered; an entry another owner
        registered under the key stays (the router refuses a reused key with other events,
        IDEMPOTENCY_CONFLICT, so that takes a new registration by hand)."""
        self.end_inflight(key, owner)
        data = slots if slots.dtype == np.uint8 else np.ascontiguousarray(slots).view(np.uint8).reshape(-1)
        _INSERT(self._meta, self._index, self._ent, self._pool, i64_bits(key[0]), i64_bits(key[1]),
                now_ns + self.window_ns, now_ns, data, rhash)

    def forget(self, key) -> None:
        self.inflight.pop(key, None)

    def end_inflight(self, key, owner=None) -> None:
        """Drop the in-flight entry of ``key`` if it is still ``owner``'s (any, if None): the
        general path's pending request (compared by identity) or the fast path's row number."""
        if owner is None or self.inflight.get(key) == owner:
            self.inflight.pop(key, None)


def record_mask(dtype: np.dtype) -> np.ndarray:
    """One record's field mask as int64 words (``records_hash``'s ``fmask``): all ones on the
    bytes of its fields, zero on its padding (the bytes the journal stores as zeros)."""
    return np.ascontiguousarray(field_mask(np.dtype(dtype)).view(np.int64))


def records_hash(records: np.ndarray, fmask: np.ndarray) -> int:
    """``_dedup_kernels.records_hash`` of a request's records (a contiguous array of the
    schema dtype, or their bytes; ``fmask``: ``record_mask`` of that dtype): what the window
    compares a retry's events by, their padding not included."""
    b = records if records.dtype == np.uint8 else records.view(np.uint8)
    if fmask.dtype != np.int64 or fmask.size < 1 or b.size % (8 * fmask.size):
        raise ValueError(f"records of {b.size} B, field mask {fmask.dtype}[{fmask.size}]: need "
                         f"int64 words and whole records")
    return int(K.records_hash(b, 0, b.size, fmask))


def _sizes(window_ns: int, max_entries: int, max_bytes: int) -> tuple[int, int]:
    """(entry capacity, a power of two >= max_entries; pool bytes) of a window."""
    if window_ns <= 0:                                        # disabled: nothing to keep
        max_entries, max_bytes = 1, _SLOT
    return 1 << (max_entries - 1).bit_length(), max_bytes - max_bytes % _SLOT
