"""OneToOneRing across two real processes (this one and a spawned peer).

Allowed outcome of every run: the consumer receives exactly seq start, start+1, ... end-1,
in order, each payload intact (check == seq * golden), whatever the batch sizes, drain
sizes, capacity and timing. Anything else (gap, duplicate, reorder, torn record, timeout) is
a failure.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm.doorbell import SemaphoreDoorbell
from shm.ring import OneToOneRing
from tests.shm.peers import MSG_DTYPE, check_messages, consume, make_messages

_SETTINGS = settings(max_examples=30, deadline=None, derandomize=False,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@pytest.fixture
def make_ring(instance):
    made = []

    def make(capacity):
        bell = SemaphoreDoorbell.create(instance, f"bell{len(made)}")
        ring = OneToOneRing.create(f"ring{len(made)}", capacity, MSG_DTYPE, instance=instance,
                                   doorbell=bell)
        made.append((ring, bell))
        return ring, bell

    yield make
    for ring, bell in made:
        ring.unlink()
        ring.close()
        bell.unlink()


@st.composite
def plans(draw):
    cap = 1 << draw(st.integers(1, 7))                 # 2 .. 128 slots: full rings are common
    total = draw(st.integers(0, 2000))
    batches = draw(st.lists(st.integers(1, cap), min_size=1, max_size=8))
    drains = draw(st.lists(st.integers(1, 2 * cap), min_size=1, max_size=8))
    start = draw(st.sampled_from([0, 1, 2**40]))
    child_produces = draw(st.booleans())
    return cap, total, batches, drains, start, child_produces


@_SETTINGS
@given(plan=plans())
def test_order_kept_nothing_lost_or_duplicated(plan, make_ring, peer):
    cap, total, batches, drains, start, child_produces = plan
    ring, bell = make_ring(cap)
    if child_produces:
        peer.start("produce", ring.name, bell.name, total, batches, start)
        got = consume(ring.name, bell.name, total, drains, start)
        sent = peer.result()
    else:
        peer.start("consume", ring.name, bell.name, total, drains, start)
        from tests.shm.peers import produce
        sent = produce(ring.name, bell.name, total, batches, start)
        got = peer.result()
    assert sent[:2] == ("ok", start + total), sent
    assert got[:2] == ("ok", start + total), got
    assert ring.occupancy() == 0
    s = ring.stats()
    assert s["producer_position"] == s["consumer_position"] == total


def test_one_million_messages_batched(make_ring, peer):
    ring, bell = make_ring(4096)
    total = 1_000_000
    peer.start("produce", ring.name, bell.name, total, [256, 1000, 17, 512, 4096, 1])
    got = consume(ring.name, bell.name, total, [1024, 4096, 333])
    assert peer.result(timeout_s=120)[:2] == ("ok", total)
    assert got[:2] == ("ok", total), got


def test_full_then_empty_then_wrap(make_ring, peer):
    ring, bell = make_ring(16)
    status, accepted, one_more = peer.call("fill", ring.name, 0)
    assert (status, accepted, one_more) == ("ok", 16, False)
    assert ring.available() == 16 and ring.occupancy() == 16
    assert ring.stats()["full_count"] == 2
    v1, v2 = ring.try_drain(100)
    assert len(v1) == 16 and len(v2) == 0 and check_messages(v1, 0) == ""
    ring.release(16)
    v1, v2 = ring.try_drain(100)
    assert len(v1) == len(v2) == 0 and ring.available() == 0
    # half a ring, then a full one that wraps (indexes 8..15, 0..7)
    peer.call("produce", ring.name, "", 8, [8], 16)
    v1, _ = ring.try_drain(100)
    ring.release(len(v1))
    assert peer.call("fill", ring.name, 24) == ("ok", 16, False)
    v1, v2 = ring.try_drain(100)
    assert (len(v1), len(v2)) == (8, 8)
    assert check_messages(v1, 24) == "" and check_messages(v2, 32) == ""
    ring.release(16)
