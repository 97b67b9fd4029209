"""The idempotency window's decided table (ingress.dedup over ingress._dedup_kernels): a hit
returns exactly the newest decision of that key, within its window and size; nothing is
forgotten while the bounds are not reached; reaching them forgets the oldest first and counts
it; and remembering a decision allocates no Python objects (fixed memory)."""
from __future__ import annotations

import sys

import numpy as np
from hypothesis import given, settings, strategies as st

from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag
from ingress.dedup import CONFLICT, IdempotencyWindow

S = 1_000_000_000


def decision(n: int, tag: int) -> np.ndarray:
    s = np.zeros(n, RESPONSE_SLOT_DTYPE)
    s["generation"] = 1
    s["score"] = np.arange(n) + tag
    s["action"] = tag % 3
    s["token"] = tag
    return s


def same(got: np.ndarray, want: np.ndarray) -> bool:
    """``got`` (a hit, flagged DUPLICATE) is ``want``, field by field (numpy's copy of a
    padded structured array leaves the padding unset)."""
    want = want.copy()
    want["flags"] |= np.uint8(DecisionFlag.DUPLICATE)
    return len(got) == len(want) and all(np.array_equal(got[f], want[f]) for f in RESPONSE_SLOT_DTYPE.names)


def test_hit_miss_size_and_expiry():
    w = IdempotencyWindow(10 * S)
    big = 2**64 - 1                                       # full u64 client and request ids
    w.finish((big, big - 1), decision(3, 7), now_ns=100)
    got = w.decided_slots((big, big - 1), 100 + 5 * S, 3, 0)
    assert same(got, decision(3, 7)) and (got["flags"] & DecisionFlag.DUPLICATE).all()
    assert w.decided_slots((big, big - 1), 100 + 5 * S, 2, 0) is CONFLICT  # another size
    assert w.decided_slots((big, big - 1), 100 + 5 * S, 3, 99) is CONFLICT   # other events
    assert w.decided_slots((big, big - 2), 100 + 5 * S, 3, 0) is None      # another key
    assert w.decided_slots((big, big - 1), 100 + 10 * S, 3, 0) is None     # window over
    assert w.evicted_early == 0


def test_a_reused_key_keeps_the_later_requests_in_flight_entry():
    """Two owners registered under one key (the router refuses a reused key with other
    events; this is the window's own contract): the first finishing must not remove the
    second's entry (a retry of the second, arriving while it is in flight, would otherwise
    be evaluated again)."""
    w = IdempotencyWindow(10 * S)
    first, second = object(), object()
    w.start((1, 5), first)
    w.start((1, 5), second)                              # same key, another size
    w.finish((1, 5), decision(1, 3), now_ns=100, owner=first)
    assert w.pending((1, 5)) is second
    w.finish((1, 5), decision(2, 4), now_ns=200, owner=second)
    assert w.pending((1, 5)) is None


def test_disabled_window_remembers_nothing():
    w = IdempotencyWindow(0)
    assert not w.enabled


def replay(w: IdempotencyWindow, ops):
    """Finish one decision per op (key number, events, time step) with a 2 s window; yields
    (position, key, n, now, newest) after each, newest: key -> (position, expiry, n, decision)."""
    newest, now = {}, 0
    for pos, (k, n, dt) in enumerate(ops):
        now += dt
        key = (k, 1000 + k)
        w.finish(key, decision(n, pos), now)
        newest[key] = (pos, now + 2 * S, n, decision(n, pos))
        yield pos, key, n, now, newest


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4), st.integers(0, 3 * S)),
                min_size=1, max_size=300),
       st.sampled_from([4, 16, 64]))
def test_exactly_the_last_max_entries_unexpired_decisions_are_found(ops, max_entries):
    """Entries bound only (a pool that never fills): a key is found iff its newest decision is
    among the last ``max_entries`` finished and its window is not over, and then it is that
    decision. Small tables: probe runs collide and the index's back-shift deletions run."""
    w = IdempotencyWindow(2 * S, max_entries, 1 << 20)
    for pos, key, n, now, newest in replay(w, ops):
        for kk, (p, exp, nn, dec) in newest.items():
            got = w.decided_slots(kk, now, nn, 0)
            assert (got is not None) == (p > pos - max_entries and exp > now), (kk, p, pos)
            if got is not None:
                assert same(got, dec) and (got["flags"] & DecisionFlag.DUPLICATE).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4), st.integers(0, S)),
                min_size=1, max_size=200),
       st.sampled_from([64 * 4, 64 * 9, 64 * 20]))
def test_a_full_pool_forgets_oldest_first_and_never_returns_a_wrong_decision(ops, max_bytes):
    w = IdempotencyWindow(2 * S, 1024, max_bytes)
    for pos, key, n, now, newest in replay(w, ops):
        assert w.decided_slots(key, now, n, 0) is not None          # the newest always fits
        found = [p for kk, (p, exp, nn, dec) in newest.items()
                 if (got := w.decided_slots(kk, now, nn, 0)) is not None and same(got, dec)]
        lost = [p for kk, (p, exp, nn, dec) in newest.items()
                if exp > now and w.decided_slots(kk, now, nn, 0) is None]
        assert not found or not lost or min(found) > max(lost)    # oldest go first
        assert len(found) + len([1 for kk, (p, exp, nn, dec) in newest.items()
                                 if w.decided_slots(kk, now, nn, 0) is None]) == len(newest)


def test_full_bounds_count_early_evictions():
    w = IdempotencyWindow(60 * S, max_entries=8, max_bytes=1 << 20)
    for i in range(20):
        w.finish((1, i), decision(1, i), now_ns=i)
    assert len(w) == 8 and w.evicted_early == 12
    assert w.decided_slots((1, 19), 20, 1, 0) is not None and w.decided_slots((1, 11), 20, 1, 0) is None
    w = IdempotencyWindow(60 * S, max_entries=1024, max_bytes=64 * 10)
    for i in range(6):
        w.finish((2, i), decision(3, i), now_ns=i)      # 192 B each: 3 fit in 640 B
    assert w.evicted_early == 3 and w.decided_slots((2, 5), 9, 3, 0) is not None


def test_remembering_allocates_no_python_objects():
    w = IdempotencyWindow(1 * S, max_entries=1 << 12, max_bytes=1 << 20)
    d = decision(1, 1)
    for i in range(5000):                     # warm: compile, fill past the window
        w.finish((7, i), d, now_ns=i * 1_000_000)
    before = sys.getallocatedblocks()
    for i in range(5000, 25000):
        w.finish((7, i), d, now_ns=i * 1_000_000)
    assert sys.getallocatedblocks() - before < 50     # 20,000 decisions, flat
