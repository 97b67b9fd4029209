"""The ingress's one admission policy (ingress.admission) on real shared-memory rings: the
general path's checks and the fast path's compiled admit refuse the same requests for the
same reasons, and the in-flight counts and request sequence are kept in one place."""
from __future__ import annotations

import os
import time
import types
import uuid

import numpy as np
import pytest

from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype
from ingress import _fast_kernels as K
from ingress import wire
from ingress.admission import (ADMITTED, BEHIND, MAX_INFLIGHT, PEER_INFLIGHT, RING_FULL,
                               Admission, RingViews)
from ingress.codec import value_checks
from ingress.dedup import IdempotencyWindow, record_mask
from shm.ring import OneToOneRing
from shm.segment import list_names, reclaim_stale, unlink_owned
from shm.tokens import EPOCH_SHIFT
from tests.ingress.wire_helpers import SCHEMA, records

CAP = 4
DEADLINE_MS = 10                         # behind (moving) = half: 5 ms; stuck = 20 ms
PER_EVENT_US = 50
SLOT = request_slot_dtype(SCHEMA.dtype)


def _cfg(max_inflight=8, per_peer=2):
    return types.SimpleNamespace(max_inflight=max_inflight, max_inflight_per_peer=per_peer,
                                 default_deadline_ms=DEADLINE_MS,
                                 default_deadline_per_event_us=PER_EVENT_US)


@pytest.fixture
def rings():
    """One worker's request ring (producer and consumer views) and response ring."""
    inst = "t" + uuid.uuid4().hex[:12]
    req = OneToOneRing.create("req", CAP, SLOT, instance=inst)
    resp = OneToOneRing.create("resp", CAP, RESPONSE_SLOT_DTYPE, instance=inst)
    worker = OneToOneRing.attach(req.name, SLOT)
    yield types.SimpleNamespace(request=req, response=resp), worker
    worker.close()
    for r in (req, resp):
        r.unlink()
        r.close()
    unlink_owned(inst, os.getpid())
    reclaim_stale(inst)
    assert list_names(inst) == []


def _fast_admit(views, adm, now):
    """The fast path's compiled admit of one valid event for worker 0 (nothing keyed)."""
    body = wire.pack_request(SCHEMA.hash, records(1), 1, 0)
    meta, index, ent, pool = IdempotencyWindow(0).tables
    cap = 8
    ft = np.zeros((cap, K.FT_WORDS), np.int64)
    free = np.arange(cap - 1, -1, -1, dtype=np.int64)
    fmeta = np.zeros(K.META_WORDS, np.int64)
    fmeta[K.TOP] = cap
    fmeta[K.MIN_DEADLINE] = K.NO_DEADLINE
    fdec = np.zeros((cap, K.SLOT_BYTES), np.uint8)
    return K.admit(body, wire.REQUEST_HEADER_SIZE, SCHEMA.record_size, value_checks(SCHEMA),
                   record_mask(SCHEMA.dtype), 0, 0, 0,
                   index, ent, pool.size, views.ring_hdr[0], views.ring_u8[0], views.ring_cap[0],
                   views.ev_off, 0, ft, free, fmeta, fdec, adm.seq, now, now + 1, adm.behind_ns)


def _publish(ring, n, arrival_ns):
    recs = np.zeros(n, SLOT)
    recs["arrival_ns"] = arrival_ns
    assert ring.try_publish(recs)


def _consume(worker, n):
    """The worker finishes ``n`` events (drained and released)."""
    v1, v2 = worker.try_drain(n)
    assert len(v1) + len(v2) == n
    worker.release(n)


def test_both_paths_refuse_a_full_ring_and_a_behind_worker_alike(rings):
    pair, worker = rings
    views = RingViews([pair], SLOT)
    adm = Admission(_cfg(), 1, views)
    now = time.monotonic_ns()
    _publish(pair.request, CAP, now)                       # full, nothing old
    assert adm.worker_refusal(0, 1, now) == RING_FULL
    assert _fast_admit(views, adm, now) == K.RING_FULL
    assert adm.why(RING_FULL, 0, now) == "a worker ring is full"
    _consume(worker, CAP)
    assert adm.worker_refusal(0, CAP, now) == ADMITTED
    assert adm.worker_refusal(0, CAP + 1, now) == RING_FULL   # all-or-nothing for a batch
    _publish(pair.request, 1, now - 6_000_000)             # moved just now; oldest: 6 ms
    assert adm.worker_refusal(0, 1, now) == BEHIND
    assert _fast_admit(views, adm, now) == K.WORKER_BEHIND
    assert "worker 0 is behind" in adm.why(BEHIND, 0, now)
    _consume(worker, 1)
    assert adm.worker_refusal(0, 1, now) == ADMITTED
    assert _fast_admit(views, adm, now) >= 0               # admitted: row 0 published
    assert pair.request.occupancy() == 1


def test_a_stalled_worker_is_not_behind_until_it_is_stuck(rings):
    """Issue 22 (refusal storms): a worker stopped past the deadline leaves the timed-out
    event in its ring; the client's resend, made then, is admitted by both paths (it waits
    and is decided when the worker runs again). It used to be refused by that event's age
    alone, at every resend until the worker moved. A worker still for over two default
    deadlines is stuck and behind; once it moves and drains, work is admitted again."""
    pair, worker = rings
    views = RingViews([pair], SLOT)
    adm = Admission(_cfg(), 1, views)
    t0 = time.monotonic_ns()
    assert adm.worker_refusal(0, 1, t0) == ADMITTED         # the first request's admission
    _publish(pair.request, 1, t0)                            # and the worker stops before it
    now = t0 + 12_000_000                                    # past its 10 ms deadline: answered
    assert adm.worker_refusal(0, 1, now) == ADMITTED         # the resend waits for the worker
    assert _fast_admit(views, adm, now) >= 0
    assert pair.request.occupancy() == 2
    stuck = t0 + 21_000_000                                  # still for over 20 ms
    assert adm.worker_refusal(0, 1, stuck) == BEHIND
    assert _fast_admit(views, adm, stuck) == K.WORKER_BEHIND
    _consume(worker, 2)                                      # it runs again and drains its ring
    assert adm.worker_refusal(0, 1, stuck) == ADMITTED


def test_a_moving_worker_with_an_old_queue_is_behind_at_half_the_deadline(rings):
    """What the rule exists for: a worker that keeps taking events while its oldest
    unfinished one has waited over half the default deadline is overloaded, so new work for it
    is refused at once (both paths) instead of queueing where it cannot be decided in time.
    The same queue behind a worker that has stood still for over half the deadline is a stall."""
    pair, worker = rings
    views = RingViews([pair], SLOT)
    adm = Admission(_cfg(), 1, views)
    t0 = time.monotonic_ns()
    _publish(pair.request, 3, t0)
    assert adm.worker_refusal(0, 1, t0) == ADMITTED
    _consume(worker, 1)                                      # it moves
    now = t0 + 6_000_000
    assert adm.worker_refusal(0, 1, now) == BEHIND
    assert _fast_admit(views, adm, now) == K.WORKER_BEHIND
    assert adm.worker_refusal(0, 1, now + 4_000_000) == BEHIND     # seen moving 4 ms ago
    assert adm.worker_refusal(0, 1, now + 6_000_000) == ADMITTED   # still 6 ms: a stall
    _consume(worker, 1)
    assert adm.worker_refusal(0, 1, now + 7_000_000) == BEHIND     # moving again, still old


def test_in_flight_counts_and_sequence_are_kept_once(rings):
    pair, _ = rings
    adm = Admission(_cfg(max_inflight=3, per_peer=2), 5, RingViews([pair], SLOT))
    first = (5 << EPOCH_SHIFT) + 1
    assert [adm.commit(b"a"), adm.commit(b"a")] == [first, first + 1]
    assert adm.refusal(b"a") == PEER_INFLIGHT              # its share is 2
    assert adm.refusal(b"b") == ADMITTED
    assert adm.commit(b"b") == first + 2
    assert adm.refusal(b"c") == MAX_INFLIGHT               # 3 in flight over both peers
    adm.release(b"a")
    assert adm.inflight == 2 and adm.refusal(b"a") == ADMITTED
    adm.release(b"a")
    adm.release(b"b")
    assert adm.inflight == 0 and adm.peer_inflight == {}


def test_the_default_deadline_grows_with_the_events_a_given_one_is_kept(rings):
    """No deadline in the header: default_deadline_ms, plus default_deadline_per_event_us per
    event after the first (a worker's time is per event); a header deadline is used as given."""
    pair, _ = rings
    adm = Admission(_cfg(), 1, RingViews([pair], SLOT))
    now = 1_000_000_000
    assert adm.deadline(now, 0) == adm.deadline(now, 0, 1) == now + DEADLINE_MS * 1_000_000
    assert adm.deadline(now, 0, 4096) == now + DEADLINE_MS * 1_000_000 + 4095 * PER_EVENT_US * 1000
    assert adm.deadline(now, 7_000, 4096) == now + 7_000_000
