"""OneToOneRing: a single-producer / single-consumer ring of fixed-size slots in shared memory.

Contract (the name says it): exactly one producer process and one consumer process at a
time. x86-64 only (see shm.atomics, shm._ring_kernels). The layout is in shm.layout.

Vocabulary: a *position* is a monotonically growing slot counter; an *index* is
``position & (capacity - 1)``. ``slots`` is a numpy view of all slots, in index order.

Producer::

    ok = ring.try_publish(records)      # all-or-nothing batch; False if it does not fit
    views = ring.try_claim(n)           # or: write in place ...
    if views is not None:
        kernel(views[0], views[1]); ring.commit(n)

Consumer::

    v1, v2 = ring.try_drain(max_n)      # up to max_n readable slots; v2 is non-empty on wrap
    handle(v1, v2); ring.release(len(v1) + len(v2))
    if nothing: idle.idle(ring)         # shm.idle.SpinThenSleep

Views returned by try_claim / try_drain are valid until commit / release: after that the
other side may reuse the slots. Each method is one compiled call (plus numpy slicing for the
views); no per-field Python work.
"""
from __future__ import annotations

import numba
import numpy as np

from shm import _ring_kernels as K
from shm import layout as L
from shm.names import SegmentError, segment_name
from shm.segment import Segment, unlink_segment


class RingAttachError(SegmentError):
    """Attaching found no ring, a corrupt ring or a ring of another slot dtype."""


class OneToOneRing:
    """One producer, one consumer. Build with ``create`` (owner) or ``attach`` (peers)."""

    def __init__(self, segment: Segment, slot_dtype: np.dtype, doorbell=None):
        self.segment = segment
        self.name = segment.name
        self.doorbell = doorbell
        self._hdr = segment.array(np.int64, 0, L.HEADER_WORDS)
        self.capacity = int(self._hdr[L.CAPACITY_WORD])
        self._mask = L.slot_index_mask(self.capacity)
        self.slot_dtype = np.dtype(slot_dtype)
        self.slots = segment.array(self.slot_dtype, L.SLOTS_OFFSET, self.capacity)
        self._empty = self.slots[:0]
        self._claim_pos = -1
        self._claim_n = 0
        self._drained_n = 0
        self.doorbell_owed = False     # try_publish(defer_doorbell=True) found the consumer asleep
        self.warm_up()

    # --- lifetime ---------------------------------------------------------------------------

    @classmethod
    def create(cls, segment_name: str, capacity: int, slot_dtype, *, instance: str,
               owner_pid: int | None = None, doorbell=None) -> "OneToOneRing":
        """Create the segment ``/risk-engine.<instance>.<owner_pid>.<segment_name>`` and its header."""
        cap = L.check_capacity(capacity)
        dt = L.check_slot_dtype(slot_dtype)
        seg = Segment.create(instance, segment_name, L.segment_bytes(cap, dt.itemsize), owner_pid)
        hdr = seg.array(np.int64, 0, L.HEADER_WORDS)
        K._init_header(hdr, cap, dt.itemsize, L.slot_dtype_hash(dt), L.LAYOUT_VERSION, L.MAGIC)
        del hdr
        return cls(seg, dt, doorbell)

    @classmethod
    def attach(cls, segment_name: str, slot_dtype, *, instance: str | None = None,
               owner_pid: int | None = None, doorbell=None) -> "OneToOneRing":
        """Map an existing ring. ``segment_name`` is the full name (``ring.name``, starting
        with '/') or the short name plus ``instance`` and ``owner_pid``.

        Raises RingAttachError naming what does not match (missing segment, magic, version,
        capacity, slot size, slot dtype, segment size).
        """
        full = segment_name if segment_name.startswith("/") else _full(segment_name, instance, owner_pid)
        dt = np.dtype(slot_dtype)
        try:
            seg = Segment.attach(full)
        except SegmentError as e:
            raise RingAttachError(str(e)) from None
        try:
            _check_header(seg, dt)
        except RingAttachError:
            seg.close()
            raise
        return cls(seg, dt, doorbell)

    def close(self) -> None:
        """Unmap in this process (the doorbell is closed too). Views handed out keep the
        mapping alive until they are garbage collected."""
        self._hdr = self.slots = self._empty = None
        self.segment.close()
        if self.doorbell is not None and hasattr(self.doorbell, "close"):
            self.doorbell.close()

    def unlink(self) -> None:
        """Remove the segment name (owner, at clean shutdown). Idempotent."""
        unlink_segment(self.name)

    @property
    def header(self) -> np.ndarray:
        """The header words (int64): for a compiled producer or consumer that calls the ring
        kernels itself (ingress.fastpath); the same atomics rules apply (shm/layout.py)."""
        return self._hdr

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) every kernel this ring calls, for its slot
        dtype, without touching the ring's state, and bind the compiled entry points.

        Runs once at construction. Calling a bound entry point skips the dispatcher's
        per-call type resolution (about half the cost of a call here); the arguments are
        always this ring's own arrays and ints, and records are checked against slot_dtype
        and passed to the any-layout ('A') specialisation, so the types always match.
        """
        hdr_t = numba.typeof(self._hdr)
        slots_t = numba.typeof(self.slots)
        i64 = numba.types.int64
        rec_t = slots_t.copy(layout="A")                   # contiguous and strided batches
        self._k_try_publish = bind_entry(K._try_publish, (hdr_t, slots_t, rec_t, i64))
        self._k_claim_position = bind_entry(K._claim_position, (hdr_t, i64, i64))
        self._k_publish = bind_entry(K._publish, (hdr_t, i64))
        self._k_readable = bind_entry(K._readable, (hdr_t, i64))
        self._k_available = bind_entry(K._available, (hdr_t,))
        self._k_release = bind_entry(K._release, (hdr_t, i64))
        self._k_occupancy = bind_entry(K._occupancy, (hdr_t,))
        self._k_prepare_sleep = bind_entry(K._prepare_sleep, (hdr_t,))
        self._k_end_sleep = bind_entry(K._end_sleep, (hdr_t,))
        self._k_load_word = bind_entry(K._load_acquire_word, (hdr_t, i64))

    def prefault(self) -> None:
        """Allocate the slot pages in this process (call from the pinned consumer: node-local)."""
        self.segment.prefault(L.SLOTS_OFFSET, self.capacity * self.slot_dtype.itemsize)

    # --- producer ---------------------------------------------------------------------------

    def try_publish(self, records: np.ndarray, defer_doorbell: bool = False) -> bool:
        """Copy all ``records`` into the ring and publish them, or nothing (returns False, and
        the refusal is counted) if they do not fit. One compiled call: copy the records
        (wrapping at most once), then one release store of the producer position; rings the
        doorbell only if the consumer sleeps. ``records`` must have exactly ``slot_dtype``
        (else ValueError); a batch larger than ``capacity`` never fits.

        ``defer_doorbell=True``: instead of ringing, remember that the consumer sleeps
        (``doorbell_owed``); the producer must call ``ring_owed()`` soon. A producer that
        publishes several messages back to back wakes its consumer once for all of them."""
        if records.dtype != self.slot_dtype or records.ndim != 1:
            raise ValueError(f"records dtype={records.dtype} ndim={records.ndim}: must be a 1-D "
                             f"array of the ring's slot_dtype {self.slot_dtype}")
        if len(records) == 0:
            return True
        if records.flags.aligned:
            rc = self._k_try_publish(self._hdr, self.slots, records, self.capacity)
        else:       # e.g. a view into a received frame: let the dispatcher specialise
            rc = K._try_publish(self._hdr, self.slots, records, self.capacity)
        if rc > 0 and self.doorbell is not None:
            if defer_doorbell:
                self.doorbell_owed = True
            else:
                self.doorbell.ring()
        return rc >= 0

    def ring_owed(self) -> None:
        """Ring the doorbell a deferred ``try_publish`` owes (no-op if none is owed)."""
        if self.doorbell_owed:
            self.doorbell_owed = False
            self.doorbell.ring()

    def try_claim(self, n: int):
        """Reserve ``n`` free slots for in-place writing: ``(view1, view2)`` (view2 is empty
        unless the claim wraps) or None if they do not fit (counted). Nothing is visible to
        the consumer until ``commit``. A new claim replaces an uncommitted one."""
        pos = self._k_claim_position(self._hdr, n, self.capacity) if n > 0 else -1
        if pos < 0:
            return None
        self._claim_pos, self._claim_n = pos, n
        i = pos & self._mask
        k = self.capacity - i
        if n <= k:
            return self.slots[i:i + n], self._empty
        return self.slots[i:], self.slots[:n - k]

    def commit(self, n: int) -> None:
        """Publish the first ``n`` (0 <= n <= claimed) slots of the last claim."""
        if n < 0 or n > self._claim_n:
            raise ValueError(f"commit n={n}: must be in [0, {self._claim_n}] (the claimed count)")
        if n and self._k_publish(self._hdr, self._claim_pos + n) and self.doorbell is not None:
            self.doorbell.ring()
        self._claim_pos, self._claim_n = -1, 0

    # --- consumer ---------------------------------------------------------------------------

    def try_drain(self, max_n: int):
        """Up to ``max_n`` readable slots as ``(view1, view2)`` in position order; both empty if
        none. Slots stay readable (and are returned again) until ``release``."""
        return self.views(*self.readable(max_n))

    def readable(self, max_n: int) -> tuple[int, int]:
        """``(position, n)``: up to ``max_n`` slots from ``position`` are readable (slot
        ``position & (capacity - 1)`` first, wrapping); ``release`` hands them back."""
        pos, n = self._k_readable(self._hdr, max_n)
        self._drained_n = max(n, 0)
        return pos, n

    def views(self, pos: int, n: int):
        """``(view1, view2)`` of ``n`` slots from position ``pos`` (view2 empty unless they
        wrap); both empty when ``n <= 0``."""
        if n <= 0:
            return self._empty, self._empty
        i = pos & self._mask
        k = self.capacity - i
        if n <= k:
            return self.slots[i:i + n], self._empty
        return self.slots[i:], self.slots[:n - k]

    def release(self, n: int) -> None:
        """Hand the first ``n`` drained slots back to the producer (release store)."""
        if n < 0 or n > self._drained_n:
            raise ValueError(f"release n={n}: must be in [0, {self._drained_n}] (the drained count)")
        if n:
            self._k_release(self._hdr, n)
            self._drained_n -= n

    def available(self) -> int:
        """Consumer: readable slots now (fresh acquire load of the producer position)."""
        return int(self._k_available(self._hdr))

    def prepare_sleep(self) -> bool:
        """Consumer: raise the sleeping flag and re-check (full fence). True: still empty, sleep
        now, then call ``end_sleep``. False: data arrived, flag already lowered."""
        return bool(self._k_prepare_sleep(self._hdr))

    def end_sleep(self) -> None:
        """Consumer: lower the sleeping flag after waking (by doorbell or timeout)."""
        self._k_end_sleep(self._hdr)

    # --- any process ------------------------------------------------------------------------

    def occupancy(self) -> int:
        """Slots published and not yet released (monitoring; any process)."""
        return int(self._k_occupancy(self._hdr))

    def stats(self) -> dict:
        """Counters kept in the header (readable from any process)."""
        h = self._hdr
        return {"producer_position": int(h[L.PRODUCER_POSITION_WORD]),
                "consumer_position": int(h[L.CONSUMER_POSITION_WORD]),
                "full_count": int(h[L.PRODUCER_FULL_COUNT_WORD]),
                "doorbell_count": int(h[L.PRODUCER_DOORBELL_COUNT_WORD]),
                "sleep_count": int(h[L.CONSUMER_SLEEP_COUNT_WORD]),
                "consumer_sleeping": int(self._k_load_word(h, L.CONSUMER_SLEEPING_WORD))}


def bind_entry(dispatcher, sig: tuple):
    """The compiled entry point of ``dispatcher`` for ``sig`` (compiled or loaded from cache
    now); the dispatcher itself if this Numba version does not expose it. Calling it skips
    the dispatcher's per-call typing: the caller must always pass exactly ``sig``."""
    dispatcher.compile(sig)
    try:
        return dispatcher.overloads[tuple(sig)].entry_point
    except (AttributeError, KeyError):
        return dispatcher


def _full(short: str, instance: str | None, owner_pid: int | None) -> str:
    if instance is None or owner_pid is None:
        raise RingAttachError(f"segment_name={short!r}: a short name needs instance= and owner_pid=")
    return segment_name(instance, short, owner_pid)


def _check_header(seg: Segment, dt: np.dtype) -> None:
    where = f"name={seg.name!r}"
    if seg.size < L.HEADER_BYTES:
        raise RingAttachError(f"{where} size={seg.size}: smaller than a ring header ({L.HEADER_BYTES} B)")
    hdr = seg.array(np.int64, 0, L.HEADER_WORDS)
    # acquire: pairs with the creator's release store of MAGIC in _init_header.
    magic = int(K._load_acquire_word(hdr, L.MAGIC_WORD))
    version, cap, slot_size, dhash = (int(hdr[w]) for w in (
        L.LAYOUT_VERSION_WORD, L.CAPACITY_WORD, L.SLOT_SIZE_WORD, L.SLOT_DTYPE_HASH_WORD))
    del hdr
    if magic != L.MAGIC:
        raise RingAttachError(f"{where} magic=0x{magic & (2**64 - 1):016x}: not an initialised ring "
                              f"(expected 0x{L.MAGIC:016x})")
    if version != L.LAYOUT_VERSION:
        raise RingAttachError(f"{where} layout_version={version}: expected {L.LAYOUT_VERSION}")
    try:
        L.check_capacity(cap)
    except L.LayoutError as e:
        raise RingAttachError(f"{where} corrupt header: {e}") from None
    if slot_size != dt.itemsize:
        raise RingAttachError(f"{where} slot_size={slot_size}: caller's slot_dtype has itemsize {dt.itemsize}")
    if dhash != L.slot_dtype_hash(dt):
        raise RingAttachError(f"{where} slot_dtype_hash=0x{dhash:x}: differs from the caller's "
                              f"slot_dtype (0x{L.slot_dtype_hash(dt):x}); same size, other fields")
    if seg.size < L.segment_bytes(cap, slot_size):
        raise RingAttachError(f"{where} size={seg.size}: capacity={cap} x slot_size={slot_size} "
                              f"needs {L.segment_bytes(cap, slot_size)} B")
