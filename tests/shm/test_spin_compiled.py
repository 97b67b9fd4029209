"""The compiled spin of SpinThenSleep (shm._spin_kernels.spin) on a real OneToOneRing: it
returns the readable slots as soon as there are any, 0 once its deadline has passed on an
empty ring, and SpinThenSleep with the default clock takes it and then sleeps as before.
Nothing here depends on timing: a deadline already past, or data already published."""
from __future__ import annotations

import time

import numpy as np
import pytest

from shm._spin_kernels import monotonic_ns, spin
from shm.doorbell import EventfdDoorbell
from shm.idle import SpinThenSleep
from shm.ring import OneToOneRing
from tests.shm.peers import MSG_DTYPE, make_messages


@pytest.fixture
def pair(instance):
    prod = OneToOneRing.create("spin", 8, MSG_DTYPE, instance=instance)
    cons = OneToOneRing.attach(prod.name, MSG_DTYPE, doorbell=EventfdDoorbell.create())
    yield prod, cons
    cons.close()
    prod.unlink()
    prod.close()


def test_the_clock_is_time_monotonic_ns():
    ts = np.zeros(2, np.int64)
    a = time.monotonic_ns()
    b = monotonic_ns(ts, 0)
    assert a <= b <= time.monotonic_ns()


def test_spin_returns_what_is_readable_or_zero_past_its_deadline(pair):
    prod, cons = pair
    ts = np.zeros(2, np.int64)
    assert spin(cons.header, 0, True, ts) == 0                # empty, deadline past: one look
    prod.try_publish(make_messages(0, 3))
    assert spin(cons.header, 0, True, ts) == 3                # readable: found at the first look
    assert spin(cons.header, time.monotonic_ns() + 10**12, False, ts) == 3
    v1, v2 = cons.try_drain(8)
    assert len(v1) + len(v2) == 3


def test_spin_then_sleep_takes_the_compiled_spin_then_sleeps_on_the_doorbell(pair):
    prod, cons = pair
    idle = SpinThenSleep(spin_us=20, sleep_timeout_ms=1, yield_cpu=True)
    prod.try_publish(make_messages(0, 2))
    assert idle.idle(cons) == 2 and idle.spin_hits == 1 and idle.last_wake == 0
    cons.release(len(cons.try_drain(8)[0]))
    assert idle.idle(cons) == 0                               # nothing comes: spin, sleep 1 ms
    assert idle.timeout_wakes == 1 and idle.last_wake == 2 and idle.spin_hits == 1
    assert prod.stats()["sleep_count"] == 1 and prod.stats()["consumer_sleeping"] == 0
