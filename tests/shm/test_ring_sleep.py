"""Sleep/wake across processes: a sleeping consumer is woken by the producer's doorbell, the
timed safety wait delivers even when no doorbell rings, and an eventfd shared by several
response rings wakes a zmq.Poller (the ingress's arrangement)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import zmq

from shm.doorbell import EventfdDoorbell, SemaphoreDoorbell
from shm.ring import OneToOneRing
from tests.shm.peers import MSG_DTYPE, check_messages, make_messages


def _wait_sleeping(ring, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while ring.stats()["consumer_sleeping"] != 1:
        assert time.monotonic() < deadline, "consumer never went to sleep"
        time.sleep(0.002)


@pytest.fixture
def ring_and_bell(instance):
    bell = SemaphoreDoorbell.create(instance, "bell")
    ring = OneToOneRing.create("ring", 64, MSG_DTYPE, instance=instance, doorbell=bell)
    yield ring, bell
    ring.unlink()
    ring.close()
    bell.unlink()


def test_sleeping_consumer_is_woken_by_the_doorbell(ring_and_bell, peer):
    ring, bell = ring_and_bell
    # the peer sleeps at once (spin_us=0) with a 60 s safety wait: only the doorbell can
    # wake it before the test's own bound
    peer.start("consume", ring.name, bell.name, 3, [8], 0, 60_000.0, 0.0)
    _wait_sleeping(ring)
    assert ring.try_publish(make_messages(0, 1))
    _wait_sleeping(ring)                                  # woke, consumed, slept again
    assert ring.try_publish(make_messages(1, 2))
    status, end, idle = peer.result(timeout_s=30)
    assert (status, end) == ("ok", 3)
    assert idle == {"doorbell_wakes": 2, "timeout_wakes": 0}
    s = ring.stats()
    assert s["doorbell_count"] == 2 and s["sleep_count"] >= 2


def test_safety_timeout_delivers_without_a_doorbell(ring_and_bell, peer):
    ring, bell = ring_and_bell
    silent = OneToOneRing.attach(ring.name, MSG_DTYPE, doorbell=None)   # a lost wake-up
    peer.start("consume", ring.name, bell.name, 1, [8], 0, 50.0, 0.0)
    _wait_sleeping(ring)
    assert silent.try_publish(make_messages(0, 1))
    status, end, idle = peer.result(timeout_s=30)
    assert (status, end) == ("ok", 1)
    assert idle["doorbell_wakes"] == 0 and idle["timeout_wakes"] >= 1
    silent.close()


def test_shared_eventfd_wakes_a_zmq_poller_for_several_rings(instance):
    efd = EventfdDoorbell.create()
    rings = [OneToOneRing.create(f"resp{k}", 8, MSG_DTYPE, instance=instance, doorbell=efd)
             for k in range(2)]
    child = subprocess.Popen([sys.executable, "-m", "tests.shm.peers", "eventfd_produce",
                              str(efd.fileno())] + [r.name for r in rings],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             pass_fds=[efd.fileno()])
    poller = zmq.Poller()
    poller.register(efd.fileno(), zmq.POLLIN)
    try:
        for seq, k in enumerate([1, 0, 1]):
            assert all(r.prepare_sleep() for r in rings)  # all empty: flags up, may sleep
            child.stdin.write(f"{k} {seq}\n")
            child.stdin.flush()
            events = dict(poller.poll(30_000))
            for r in rings:
                r.end_sleep()
            assert events.get(efd.fileno()) == zmq.POLLIN
            assert efd.drain() == 1
            assert child.stdout.readline().strip() == "ok"
            v1, v2 = rings[k].try_drain(8)
            assert len(v1) == 1 and check_messages(v1, seq) == ""
            rings[k].release(1)
            assert rings[1 - k].available() == 0
        assert dict(poller.poll(0)) == {}                  # no stray wake-up left behind
    finally:
        child.stdin.close()
        child.wait(30)
        for r in rings:
            r.doorbell = None
            r.unlink()
            r.close()
        efd.close()
