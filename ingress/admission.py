"""Admission: the one policy both ingress paths apply before a request reaches a worker.

A request is admitted while (in this order) fewer than ``ingress.max_inflight`` requests are
in flight, its connection holds fewer than its share (``max_inflight_per_peer``), and each
worker it goes to has room in its request ring and is not behind. A worker is behind when its
oldest unfinished event has waited over half the default deadline while the worker is moving
(it is overloaded: what it admits now could not be decided in time), or over two default
deadlines whatever it does (stuck). A worker that stopped moving less than that ago (a
scheduling stall) is not behind: what is sent to it waits and is decided when it runs again,
so a stall costs the requests in flight during it, not a refusal at every resend
(``_fast_kernels.worker_refusal``). Otherwise it is refused OVERLOADED with the reason counted
(OVERLOAD_REASONS). The
fast path (ingress.fastpath) asks the same questions (the worker's inside its compiled admit,
through ``_fast_kernels.worker_refusal``) and declines what fails, so that the general path
(ingress.generalpath) answers it with the reason named.

Admission also numbers the admitted requests (the sequence in every ring token) and keeps the
in-flight counts, so each path only tells it what it admitted (``commit``) and answered
(``release``). Routing (``Shards``) and the ring views the compiled calls take
(``RingViews``) are here too: both paths use them and neither owns them.
"""
from __future__ import annotations

import struct

import numba
import numpy as np

from shm.control import OVERLOAD_REASONS
from ingress import _fast_kernels as FK
from shm.ring import bind_entry
from shm.tokens import first_sequence

_HASH_MUL_INT = 0x9E3779B97F4A7C15      # shard = ((key * this) mod 2^64 >> 32) mod workers
_HASH_MUL = np.uint64(_HASH_MUL_INT)
_U64 = (1 << 64) - 1
DOORBELL_DEFER_NS = 100_000           # while more requests are queued, wake a sleeping worker
                                      # at most this late (one wake-up for several requests)
RING_FULL, MAX_INFLIGHT, BEHIND, PEER_INFLIGHT = (OVERLOAD_REASONS.index(r) for r in (
    "ring_full", "max_inflight", "worker_behind", "peer_inflight"))
ADMITTED = -1                         # a refusal method's answer when nothing refuses
INFLIGHT, SEQ = 0, 1                  # Admission.cells: shared with the compiled loop


def shard_of(keys: np.ndarray, n_workers: int) -> np.ndarray:
    """Worker index per event: a multiplicative hash of the shard key (vectorised)."""
    h = keys.astype(np.uint64, copy=False) * _HASH_MUL
    return ((h >> np.uint64(32)) % np.uint64(n_workers)).astype(np.intp)


def shard_struct(dt: np.dtype) -> struct.Struct:
    """A struct reading one integer shard key field of dtype ``dt`` (little-endian)."""
    code = {1: "b", 2: "h", 4: "i", 8: "q"}[dt.itemsize]
    return struct.Struct("<" + (code.upper() if dt.kind == "u" else code))


class Shards:
    """Which worker an event goes to (single writer per shard key)."""

    def __init__(self, schema, n_workers: int):
        self.n_workers = n_workers
        self.key = schema.shard_key
        key = schema.dtype.fields[self.key]
        self.shard_struct = shard_struct(key[0])
        self.shard_off = key[1]

    def of(self, records: np.ndarray) -> np.ndarray:
        """``shard_of`` for the records of one request."""
        return shard_of(records[self.key], self.n_workers)

    def worker_of_record(self, buf, off: int) -> int:
        """The worker of the one event record at ``buf[off:]``: ``shard_of`` for one key."""
        if self.n_workers == 1:
            return 0
        key = self.shard_struct.unpack_from(buf, self.shard_off + off)[0] & _U64
        return (((key * _HASH_MUL_INT) & _U64) >> 32) % self.n_workers


class RingViews:
    """The rings as the compiled calls take them (bytes per slot, header words), per worker,
    and the request rings' deferred doorbells; one per ingress, shared by both paths."""

    def __init__(self, rings: list, slot_dtype: np.dtype):
        self.request = [r.request for r in rings]
        self.ring_u8 = [q.slots.view(np.uint8).reshape(q.capacity, -1) for q in self.request]
        self.ring_hdr = [q.header for q in self.request]
        self.ring_cap = [q.capacity for q in self.request]
        self.resp_u8 = [r.response.slots.view(np.uint8).reshape(r.response.capacity, -1)
                        for r in rings]
        self.ev_off = slot_dtype.fields["event"][1]
        self.owed_since = 0            # first publish whose doorbell is deferred (0: none)

    def owe(self, w: int) -> None:
        """Worker ``w`` fell asleep before a publish: ring it with the next ``ring_owed``."""
        self.request[w].doorbell_owed = True

    def ring_owed(self) -> None:
        """Wake the workers that fell asleep while requests were published to them. Deferred
        while more requests are queued (at most DOORBELL_DEFER_NS): under load one wake-up
        serves several requests instead of one system call and context switch each."""
        for q in self.request:
            q.ring_owed()
        self.owed_since = 0


class Admission:
    """The admission policy (module doc), its counts and the request sequence."""

    def __init__(self, ingress_cfg, epoch: int, views: RingViews):
        self.max_inflight = ingress_cfg.max_inflight
        # one connection's share: a client pipelining requests cannot take every slot
        self.max_per_peer = ingress_cfg.max_inflight_per_peer or max(1, self.max_inflight // 4)
        self.default_deadline_ns = ingress_cfg.default_deadline_ms * 1_000_000
        self.per_event_ns = ingress_cfg.default_deadline_per_event_us * 1000
        # a moving worker whose oldest unfinished event has waited this long is behind (module
        # doc); a still one after FK.STUCK_FACTOR times this (two default deadlines)
        self.behind_ns = self.default_deadline_ns // 2
        # requests admitted, not yet answered (both paths), and the next admitted request's
        # sequence (shm.tokens): cells, so the compiled loop (ingress.compiledloop) counts too
        self.cells = np.zeros(2, np.int64)
        self.cells[SEQ] = first_sequence(epoch)
        self.peer_inflight: dict[bytes, int] = {}   # ROUTER identity -> requests in flight
        # with the compiled loop, its requests are not in peer_inflight: this counts them
        self.peer_extra = None
        self._views = views
        ty, i64 = numba.typeof, numba.types.int64
        hdr_t, u8_t = ty(views.ring_hdr[0]), ty(views.ring_u8[0])
        self._worker_refusal = bind_entry(FK.worker_refusal, (hdr_t, u8_t, i64, i64, i64, i64))
        self._queue_age = bind_entry(FK.queue_age, (hdr_t, u8_t, i64, i64))

    def refusal(self, peer: bytes) -> int:
        """The reason (OVERLOAD_REASONS index) a request of connection ``peer`` is refused
        before routing (in-flight limits), or ADMITTED."""
        inflight = self.inflight
        if inflight >= self.max_inflight:
            return MAX_INFLIGHT
        c = self.peer_inflight.get(peer, 0)
        if self.peer_extra is not None and inflight >= self.max_per_peer:
            c += self.peer_extra(peer)            # (under that, no peer can be at its share)
        if c >= self.max_per_peer:
            return PEER_INFLIGHT
        return ADMITTED

    @property
    def inflight(self) -> int:
        return int(self.cells[INFLIGHT])

    @property
    def seq(self) -> int:
        return int(self.cells[SEQ])

    def worker_refusal(self, w: int, n: int, now_ns: int) -> int:
        """The reason ``n`` events for worker ``w`` are refused (ring full, worker behind),
        or ADMITTED: the compiled check the fast path makes inside its admit."""
        v = self._views
        r = self._worker_refusal(v.ring_hdr[w], v.ring_u8[w], v.ring_cap[w], n, now_ns, self.behind_ns)
        return ADMITTED if r == 0 else RING_FULL if r == FK.RING_FULL else BEHIND

    def why(self, reason: int, w: int = 0, now_ns: int = 0) -> str:
        """What the OVERLOADED reply says for ``reason`` (worker ``w`` for ring and age)."""
        if reason == MAX_INFLIGHT:
            return f"ingress.max_inflight={self.max_inflight} requests in flight"
        if reason == PEER_INFLIGHT:
            return (f"ingress.max_inflight_per_peer={self.max_per_peer} requests "
                    f"of this connection in flight")
        if reason == RING_FULL:
            return "a worker ring is full"
        v = self._views
        age = self._queue_age(v.ring_hdr[w], v.ring_u8[w], v.ring_cap[w], now_ns)
        return f"worker {w} is behind: its oldest queued event has waited {age / 1e6:.1f} ms"

    def commit(self, peer: bytes) -> int:
        """A request of ``peer`` was admitted: count it; returns its sequence number. ``peer``
        None: its connection is counted by ``peer_extra`` (the compiled loop's rows)."""
        cells = self.cells
        seq = int(cells[SEQ])
        cells[SEQ] = seq + 1
        cells[INFLIGHT] += 1
        if peer is None:
            return seq
        pin = self.peer_inflight
        pin[peer] = pin.get(peer, 0) + 1
        return seq

    def release(self, peer: bytes) -> None:
        """An admitted request of ``peer`` was answered: no longer in flight (None: as in
        ``commit``)."""
        self.cells[INFLIGHT] -= 1
        if peer is None:
            return
        c = self.peer_inflight.pop(peer, 1) - 1
        if c:
            self.peer_inflight[peer] = c

    def deadline(self, now_ns: int, deadline_us: int, n: int = 1) -> int:
        """When a request of ``n`` events that arrived at ``now_ns`` must be answered: its
        header's deadline, or, when it carries none (0), ingress.default_deadline_ms plus
        ingress.default_deadline_per_event_us for each event after the first (a worker takes
        time per event: a 4096-event batch missed a flat 50 ms on a fresh engine here)."""
        if deadline_us:
            return now_ns + deadline_us * 1000
        return now_ns + self.default_deadline_ns + (n - 1) * self.per_event_ns
