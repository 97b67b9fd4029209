"""OneToOneRing API semantics in one process (producer and consumer views of one segment).

The cross-process properties are in test_ring_cross.py; these pin down the contract of each
call: all-or-nothing publish, wrap-around views, claim/commit, partial release, counters.
"""
from __future__ import annotations

import numpy as np
import pytest

from shm.runtime.config import load_config
from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype
from shm.doorbell import EventfdDoorbell
from shm.ring import OneToOneRing
from tests.shm.peers import MSG_DTYPE, check_messages, make_messages


@pytest.fixture
def pair(instance):
    prod = OneToOneRing.create("ring", 8, MSG_DTYPE, instance=instance)
    cons = OneToOneRing.attach(prod.name, MSG_DTYPE)
    yield prod, cons
    cons.close()
    prod.unlink()
    prod.close()


def _drain_all(cons, start):
    v1, v2 = cons.try_drain(1 << 20)
    assert check_messages(v1, start) == "" and check_messages(v2, start + len(v1)) == ""
    n = len(v1) + len(v2)
    cons.release(n)
    return n


def test_empty_ring_drains_nothing(pair):
    prod, cons = pair
    v1, v2 = cons.try_drain(4)
    assert len(v1) == len(v2) == 0
    assert cons.available() == 0 and prod.occupancy() == 0
    with pytest.raises(ValueError, match="release n=1"):
        cons.release(1)


def test_publish_is_all_or_nothing_and_refusals_are_counted(pair):
    prod, cons = pair
    assert prod.try_publish(make_messages(0, 6))
    assert not prod.try_publish(make_messages(6, 3))         # 6 + 3 > 8: nothing written
    assert prod.occupancy() == 6 and prod.stats()["full_count"] == 1
    assert prod.try_publish(make_messages(6, 2))             # exactly full
    assert not prod.try_publish(make_messages(8, 1))
    assert not prod.try_publish(make_messages(8, 9))          # larger than the ring: never fits
    assert cons.available() == 8
    assert _drain_all(cons, 0) == 8
    assert prod.try_publish(make_messages(8, 8))              # room again after release


def test_wraparound_gives_two_views_in_position_order(pair):
    prod, cons = pair
    assert prod.try_publish(make_messages(0, 5)) and _drain_all(cons, 0) == 5
    assert prod.try_publish(make_messages(5, 7))              # indexes 5,6,7,0,1,2,3
    v1, v2 = cons.try_drain(100)
    assert (len(v1), len(v2)) == (3, 4)
    assert check_messages(v1, 5) == "" and check_messages(v2, 8) == ""
    cons.release(7)


def test_drain_respects_max_n_and_partial_release_rereads(pair):
    prod, cons = pair
    prod.try_publish(make_messages(0, 6))
    v1, v2 = cons.try_drain(4)
    assert len(v1) + len(v2) == 4
    cons.release(1)                                           # only the first one
    v1, v2 = cons.try_drain(100)
    assert check_messages(v1, 1) == "" and len(v1) + len(v2) == 5
    cons.release(5)
    assert cons.available() == 0


def test_claim_and_commit_write_in_place_across_the_wrap(pair):
    prod, cons = pair
    prod.try_publish(make_messages(0, 6))
    _drain_all(cons, 0)
    views = prod.try_claim(5)                                 # indexes 6,7,0,1,2
    assert views is not None and (len(views[0]), len(views[1])) == (2, 3)
    assert cons.available() == 0                              # nothing visible before commit
    recs = make_messages(6, 5)
    views[0][:] = recs[:2]
    views[1][:] = recs[2:]
    prod.commit(4)                                            # fewer than claimed is fine
    assert _drain_all(cons, 6) == 4
    with pytest.raises(ValueError, match="commit n=1"):
        prod.commit(1)                                        # the claim is over
    assert prod.try_claim(9) is None
    assert prod.try_claim(0) is None


def test_publish_needs_the_slot_dtype(pair):
    prod, _ = pair
    with pytest.raises(ValueError, match="slot_dtype"):
        prod.try_publish(np.zeros(1, RESPONSE_SLOT_DTYPE))
    with pytest.raises(ValueError, match="ndim=2"):
        prod.try_publish(np.zeros((1, 1), MSG_DTYPE))


def test_publish_from_unaligned_and_readonly_buffers(instance):
    dt = np.dtype({"names": ["token", "fired"], "formats": ["<u8", ("<u2", (16,))],
                   "offsets": [0, 8], "itemsize": 64, "aligned": True})   # alignment 8
    prod = OneToOneRing.create("unaligned", 8, dt, instance=instance)
    cons = OneToOneRing.attach(prod.name, dt)
    raw = bytearray(1 + 3 * dt.itemsize)
    recs = np.frombuffer(raw, dt, 3, offset=1)                 # like a body after a 1-byte header
    recs["token"] = [1, 2, 3]
    recs["fired"][1] = np.arange(16)
    assert not recs.flags.aligned
    assert prod.try_publish(recs)
    frozen = np.frombuffer(recs.tobytes(), dt)
    assert not frozen.flags.writeable
    assert prod.try_publish(frozen)
    v1, v2 = cons.try_drain(8)
    assert v1.tobytes() == recs.tobytes() * 2 and len(v2) == 0
    cons.release(6)
    cons.close()
    prod.unlink()
    prod.close()


def test_engine_slot_dtypes_round_trip(instance):
    cfg = load_config()
    for name, dt in (("req", request_slot_dtype(cfg.schema.dtype)), ("resp", RESPONSE_SLOT_DTYPE)):
        ring = OneToOneRing.create(name, 16, dt, instance=instance)
        peer = OneToOneRing.attach(name, dt, instance=instance, owner_pid=int(ring.name.split(".")[2]))
        ring.prefault()
        recs = np.zeros(3, dt)
        recs["token"] = [7, 8, 9]
        recs[1:2].view(np.uint8)[:] = 0xAB                   # every byte, padding included
        recs["token"][1] = 8
        assert ring.try_publish(recs)
        v1, _ = peer.try_drain(8)
        assert v1.tobytes() == recs.tobytes()
        peer.release(3)
        peer.close()
        ring.unlink()
        ring.close()


def test_stats_count_sleeps_and_doorbell_rings(pair):
    prod, cons = pair
    bell = prod.doorbell = EventfdDoorbell.create()
    assert cons.prepare_sleep()                               # empty: flag up, safe to sleep
    assert prod.stats()["consumer_sleeping"] == 1
    prod.try_publish(make_messages(0, 1))                     # sees the flag: rings once
    prod.try_publish(make_messages(1, 1))                     # flag already lowered: no ring
    cons.end_sleep()
    assert bell.drain() == 1
    bell.close()
    assert not cons.prepare_sleep()                           # data there: do not sleep
    s = prod.stats()
    assert (s["sleep_count"], s["doorbell_count"], s["consumer_sleeping"]) == (1, 1, 0)


def test_deferred_doorbell_rings_once_when_the_producer_pays_it(pair):
    prod, cons = pair
    bell = prod.doorbell = EventfdDoorbell.create()
    prod.ring_owed()                                          # nothing owed: no ring
    assert cons.prepare_sleep()
    assert prod.try_publish(make_messages(0, 1), defer_doorbell=True)
    assert prod.try_publish(make_messages(1, 1), defer_doorbell=True)
    assert prod.doorbell_owed and bell.drain() == 0           # the consumer still sleeps
    prod.ring_owed()
    prod.ring_owed()                                          # paid: the second is a no-op
    assert bell.drain() == 1 and not prod.doorbell_owed
    cons.end_sleep()
    v1, _ = cons.try_drain(8)
    assert len(v1) == 2 and check_messages(v1, 0) == ""
    cons.release(len(v1))
    assert prod.try_publish(make_messages(2, 1), defer_doorbell=True)   # consumer awake
    assert not prod.doorbell_owed
    bell.close()


def test_warm_up_compiles_every_signature_the_calls_use(pair):
    from shm import _ring_kernels as K
    prod, cons = pair
    prod.warm_up()
    kernels = [K._try_publish, K._readable, K._release, K._claim_position, K._publish,
               K._available, K._occupancy, K._prepare_sleep, K._end_sleep]
    before = [len(k.signatures) for k in kernels]
    assert prod.try_publish(make_messages(0, 2))
    strided = np.zeros(4, MSG_DTYPE)[::2]
    strided[:] = make_messages(2, 2)
    assert prod.try_publish(strided)                          # a strided batch
    views = prod.try_claim(1)
    views[0][:] = make_messages(4, 1)
    prod.commit(1)
    assert _drain_all(cons, 0) == 5
    cons.available(), cons.occupancy()
    assert cons.prepare_sleep()
    cons.end_sleep()
    assert [len(k.signatures) for k in kernels] == before
