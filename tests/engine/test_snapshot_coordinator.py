"""The snapshot pause protocol, both halves (engine.snapshot_coordinator), in one process:
the supervisor side (SnapshotCoordinator.paused_workers) against worker threads running the
worker side (hold_for_snapshot) between their "batches", over a real control block. The
engine tests (test_admin, test_crash_recovery) cover it across processes."""
from __future__ import annotations

import threading
import time

import pytest

from shm.runtime.config import load_config
from shm.control import Block, BlockLayout
from engine.snapshot_coordinator import SnapshotCoordinator, SnapshotError, hold_for_snapshot
from engine.worker_stalls import StallRecorder
from shm.idle import SpinThenSleep

WAIT_S = 30          # generous: the machine may be loaded


def wait_for(cond, timeout_s: float = WAIT_S) -> bool:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if cond():
            return True
        time.sleep(0.001)
    return False


class Workers:
    """Threads that each count "batches" and run the worker side of the pause between two."""

    def __init__(self, block: Block, indexes):
        self.block = block
        self.batches = {w: 0 for w in indexes}
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in indexes]
        for w in indexes:
            block.view("supervisor.worker_alive")[w] = 1

    def _run(self, w: int) -> None:
        stalls = StallRecorder(self.block, w, SpinThenSleep())
        pause = self.block.view("supervisor.pause")
        while not self.stopped.is_set():
            if pause[0]:
                hold_for_snapshot(self.block, w, None, stalls)
            self.batches[w] += 1
            time.sleep(0.0005)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.block.view("supervisor.stop")[0] = 2       # a held worker leaves its hold
        for t in self.threads:
            t.join(WAIT_S)


def coordinator(n_workers: int) -> SnapshotCoordinator:
    block = Block(bytearray(BlockLayout(n_workers).nbytes), n_workers, create=True)
    return SnapshotCoordinator(load_config(), block, [], None, time.monotonic())


def test_the_workers_stay_held_for_the_whole_block_and_resume_after():
    coord = coordinator(2)
    b = coord.block
    with Workers(b, (0, 1)) as ws:
        assert wait_for(lambda: all(ws.batches.values()))
        for epoch in (1, 2):                             # each hold has a new epoch
            with coord.paused_workers(timeout_s=WAIT_S):
                assert coord.hold_lock.locked()          # a metrics scrape waits meanwhile
                assert int(b.view("supervisor.pause")[0]) == epoch
                assert [int(b.worker(w, "paused")[0]) for w in (0, 1)] == [epoch, epoch]
                held = dict(ws.batches)
                time.sleep(0.05)
                assert ws.batches == held                # no batch while held
            assert int(b.view("supervisor.pause")[0]) == 0 and not coord.hold_lock.locked()
            assert wait_for(lambda: all(ws.batches[w] > held[w] for w in (0, 1)))


def test_a_worker_that_is_not_alive_is_not_waited_for():
    coord = coordinator(2)
    with Workers(coord.block, (0,)) as ws:
        assert wait_for(lambda: ws.batches[0] > 0)
        with coord.paused_workers(timeout_s=WAIT_S):     # worker 1: alive = 0, never pauses
            assert int(coord.block.worker(0, "paused")[0]) == 1
            assert int(coord.block.worker(1, "paused")[0]) == 0


def test_a_worker_that_never_pauses_fails_the_hold_and_releases_everything():
    coord = coordinator(2)
    b = coord.block
    with Workers(b, (0,)):
        b.view("supervisor.worker_alive")[1] = 1          # alive, but no thread runs it
        with pytest.raises(SnapshotError, match="workers did not pause within 0.2 s"):
            with coord.paused_workers(timeout_s=0.2):
                pytest.fail("the block ran without every live worker paused")
        assert int(b.view("supervisor.pause")[0]) == 0 and not coord.hold_lock.locked()


def test_a_worker_that_dies_before_it_pauses_ends_the_hold_at_once():
    """A worker killed while a hold waits for it (alive still 1: the supervisor's loop has not
    reaped it) never pauses: the hold ends with that reason, not after timeout_s with the other
    workers held all along (which put their requests past a 10 s deadline under load)."""
    coord = coordinator(2)
    coord.exited = lambda w: w == 1
    b = coord.block
    with Workers(b, (0,)):
        b.view("supervisor.worker_alive")[1] = 1
        with pytest.raises(SnapshotError, match="worker 1 exited before it paused"):
            with coord.paused_workers(timeout_s=120):
                pytest.fail("the block ran without every live worker paused")
        assert int(b.view("supervisor.pause")[0]) == 0 and not coord.hold_lock.locked()


def test_a_snapshot_without_the_journal_is_a_snapshot_error_not_a_startup_error():
    from shm.runtime.config import parse_config, portable_raw
    from engine.preflight import StartupError
    raw = portable_raw()
    raw["journal"] = {"enabled": False}
    coord = coordinator(1)
    coord.cfg = parse_config(raw)
    with pytest.raises(SnapshotError, match="journal.enabled is false") as e:
        coord.snapshot(generation=1)
    assert not isinstance(e.value, StartupError)
