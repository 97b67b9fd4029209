"""``cluster.ack: sync``: a worker that holds replies wakes the journal tailer through the
node's eventfd (engine.cluster.tailwake) instead of the tailer polling the marks.

- the wake's eventfd rung by another process, also before the wait began, wakes the loop;
  unrung, the wait ends at its timeout;
- the worker's gate (engine.ackgate) rings it each time it holds a batch;
- a Replicator as serve runs it, on three nats-servers, with its polling and its full steps
  pushed out to an hour: a journaled record whose worker rang is published and resolved.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import engine.cluster.replicate as replicate
from engine.ackgate import ReplyGate
from engine.cluster.replicate import Replicator
from engine.cluster.tailwake import TailerWake
from shm.doorbell import EventfdDoorbell
from shm.replication import ReplicationMarks
from shm.types import RESPONSE_SLOT_DTYPE
from tests.cluster.tailerproc import SCHEMA
from tests.cluster.test_partstate import wait
from tests.cluster.test_replication import P, journal, owning_all, run, write

HOUR_S = 3600.0


def ring_from_another_process(bell: EventfdDoorbell) -> None:
    fd = bell.fileno()
    subprocess.run([sys.executable, "-c", f"import os; os.eventfd_write({fd}, 1)"], pass_fds=(fd,),
                   check=True, timeout=60)


@pytest.fixture
def bell():
    b = EventfdDoorbell.create()
    yield b
    b.close()


def test_a_ring_from_another_process_wakes_the_wait_also_one_rung_before_it(bell):
    async def body():
        w = TailerWake(bell)
        w.attach()
        try:
            assert await w.wait(0.01) is False              # not rung: the timeout
            ring_from_another_process(bell)                 # rung before the wait began
            assert await asyncio.wait_for(w.wait(HOUR_S), 30) is True
            assert await w.wait(0.01) is False              # one ring, one wake
            waiter = asyncio.ensure_future(w.wait(HOUR_S))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            ring_from_another_process(bell)                 # rung during the wait
            assert await asyncio.wait_for(waiter, 30) is True
        finally:
            w.detach()
    asyncio.run(body())


def test_a_gate_rings_the_tailer_each_time_it_holds_replies(bell):
    class Rings:
        response = None                 # nothing is released: the marks stay at 0
        response_full_idle = None

    gate = ReplyGate(Rings, ReplicationMarks(), 0, np.zeros(1, np.int64), action=2, capacity=64)
    gate.bell = bell
    assert bell.drain() == 0
    gate.hold(np.zeros(3, RESPONSE_SLOT_DTYPE), 1, 3)
    assert gate.marks.journaled_seq[0] == 3 and bell.drain() == 1
    gate.hold(np.zeros(2, RESPONSE_SLOT_DTYPE), 4, 5)
    gate.hold(np.zeros(1, RESPONSE_SLOT_DTYPE), 6, 6)
    assert bell.drain() == 2


def test_a_sync_replicator_publishes_a_record_when_its_worker_rings(nats3, tmp_path, monkeypatch, bell):
    """Polling (SYNC_IDLE_S) and full steps (IDLE_S) pushed out to an hour: only the ring can
    make the tailer read the record; it is then published and resolved in the marks."""
    monkeypatch.setattr(replicate, "IDLE_S", HOUR_S)
    monkeypatch.setattr(replicate, "SYNC_IDLE_S", HOUR_S / 2)
    jw = journal(tmp_path)                  # the writer's segment exists before the fences
    marks = ReplicationMarks()
    cfg = SimpleNamespace(cluster=SimpleNamespace(servers=tuple(nats3.urls), credentials=nats3.credentials,
                                                  node="a", partitions=P, ack="sync"),
                          schema=SCHEMA, durability=SimpleNamespace(journal_dir=str(tmp_path),
                                                                    snapshot_interval_s=HOUR_S))
    a = Replicator(cfg, owning_all(5), print, 30, None, lambda: None, marks=marks, wake=TailerWake(bell))

    async def body(js):
        stop = asyncio.Event()
        task = asyncio.ensure_future(a.run(stop))
        try:
            await wait(lambda: a.rlog is not None and len(a.rlog.fenced) == P)   # the first, full step
            await asyncio.sleep(0.1)                         # ... over: the loop waits for a ring
            write(jw, 5, 1)
            marks.journaled_seq[0] = jw.last_seq             # as the gate does: the mark, then
            ring_from_another_process(bell)                  # the ring
            await wait(lambda: marks.state(0, 1, jw.last_seq) == 1, 30)
            assert a.rlog.counters.published_records == 5
        finally:
            stop.set()
            bell.ring()                                      # the loop sees stop at once
            await asyncio.wait_for(task, 30)
    run(nats3, body)
    jw.close()
