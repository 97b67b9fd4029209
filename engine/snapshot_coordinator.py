"""Snapshots of the feature tables, and both halves of the pause protocol they need.

The supervisor side (``SnapshotCoordinator.paused_workers``) raises ``supervisor.pause`` to a
new epoch and waits until every live worker has echoed it in its ``paused`` cell; the worker
side (``hold_for_snapshot``, called by engine.worker between two batches) publishes its
journal's last seq, echoes the epoch, and waits for the pause to drop. While held, the tables
equal the state after exactly those journal records (docs/DURABILITY.md).
"""
from __future__ import annotations

import os
import resource
import threading
import time
from contextlib import contextmanager

import numpy as np
from numba import njit

from engine.journal import journal_dtype, list_writers
from engine.journal_segments import sync_tail
from engine.snapshot import SnapshotStore
from shm.control import STALL_NS, STALL_PHASES, Block, EventLog

_HOLD = STALL_PHASES.index("hold")


class SnapshotError(RuntimeError):
    """A snapshot could not be taken (the workers did not pause, or the journal is off); the
    engine keeps serving and the message says why."""


@contextmanager
def _realtime():
    """SCHED_FIFO (priority 1) for this thread inside the block, when it may (root or
    CAP_SYS_NICE); otherwise nothing changes. For the snapshot's hold: the workers wait for
    one memory copy of the tables, and with the CPUs busy the copy competed with every other
    thread, once stretching a 10 ms copy into a 136 ms hold that cost 100 TIMEOUTs
    (docs/DURABILITY.md). It sleeps while it waits for the workers, so they are not starved."""
    try:
        old = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        old = None
    try:
        yield
    finally:
        if old is not None:
            os.sched_setscheduler(0, *old)


@njit(cache=True)
def _copy_tables(dst, src):
    """Copy every feature array (a tuple of uint64 arrays) in one call that keeps the GIL:
    np.copyto releases it for each array, and getting it back could wait for another thread
    of this process (a metrics scrape) that the busy CPUs had preempted."""
    for i in range(len(src)):
        dst[i][:] = src[i]


def _touch_pages(a: np.ndarray, write: bool) -> None:
    """Fault in every page of a contiguous array in this process (read: map it; write:
    allocate it). Arrays that are not contiguous are left alone."""
    if not a.flags.c_contiguous or a.nbytes == 0:
        return
    b = a.reshape(-1).view(np.uint8)
    if write:
        b[::4096] = 0
    else:
        int(b[::4096].sum())


def hold_for_snapshot(block: Block, index: int, journal, stalls) -> None:
    """Snapshot protocol, worker side: publish the journal's last seq, say "paused", and wait
    until the supervisor has copied the tables. The copy then equals the state after exactly
    those journal records (docs/DURABILITY.md). The journal is made durable by the supervisor
    after the workers resume, before the snapshot file is written: the pause lasts one
    memory copy, not a disk flush. ``stalls``: the worker's engine.worker_stalls.StallRecorder."""
    pause = block.view("supervisor.pause")
    stop = block.view("supervisor.stop")
    paused = block.worker(index, "paused")
    epoch = int(pause[0])
    if not epoch or paused[0] == epoch:
        return
    if journal is not None:             # durable later: the supervisor fsyncs the segments
        block.worker(index, "journal_seq")[0] = journal.last_seq   # before writing the snapshot
    paused[0] = epoch                   # the supervisor copies the tables after this store
    t0 = time.monotonic_ns()
    while pause[0] == epoch and stop[0] < 2:
        time.sleep(0.0002)
    held = time.monotonic_ns() - t0
    if held > STALL_NS:
        stalls.add(_HOLD, held, 0)
    retain = int(block.worker(index, "retain_seq")[0])
    if journal is not None and retain:
        journal.set_snapshot_seq(retain)   # retention never deletes what a snapshot needs


class SnapshotCoordinator:
    """The supervisor's side: pauses the workers (for a snapshot, or for a feature rebuild
    after a worker died), copies the tables and writes the snapshot file. Made by the
    supervisor once the control block, the rings and the feature tables exist."""

    def __init__(self, cfg, block: Block, rings: list, features, last_snapshot_s: float,
                 exited=lambda w: False, log=lambda line: None):
        self.cfg = cfg
        self.exited = exited                # exited(w): worker w's process has ended (reaped
                                            # or not): it will never pause
        self.block = block
        self.rings = rings                  # the supervisor's EngineRings, one per worker
        self.features = features            # shm.featurestore.FeatureStore
        self.hold_lock = threading.Lock()   # held while the workers are paused (paused_workers):
                                            # a metrics scrape takes it (engine.exporter)
        self.pause_epoch = 0                # the last epoch written to supervisor.pause
        self.last_snapshot_s = last_snapshot_s   # time.monotonic() of the last snapshot (or start)
        self._bufs: dict = {}               # reused copy buffers (_snapshot_buffers)
        self.written: tuple | None = None   # what the last snapshot written covers (_changes)
        self.log = log                      # one line when periodic snapshots start skipping
        self.skipping = False

    def due(self) -> bool:
        """A periodic snapshot is due (snapshot.interval_s since the last; journal on)."""
        d = self.cfg.durability
        return d.journal_enabled and time.monotonic() - self.last_snapshot_s > d.snapshot_interval_s

    def periodic(self, generation: int, timeout_s: float = 5.0) -> str | None:
        """The periodic snapshot: written only when the state changed since the last one
        (a journal record, an admin change or a reload); otherwise counted in
        ``supervisor.snapshots_skipped`` and None. An idle engine so writes no 77 MB file a
        minute; recovery from the older snapshot plus the journal after it is the same."""
        path = self.snapshot(generation, timeout_s, skip_unchanged=True)
        if path is None:
            b = self.block.view("supervisor.snapshots_skipped")
            if self.skipping is False:
                self.log("risk-engine: snapshot skipped: nothing changed since the last one "
                         "(further skips are counted in risk_snapshots_skipped_total)")
            self.skipping = True
            b[0] += 1
        else:
            self.skipping = False
        return path

    def _changes(self, generation: int) -> tuple:
        """What decides whether the state changed, apart from the journal seqs read in the
        hold: admin.log (every list, state and halt change is appended to it, by this thread,
        before it is applied) and the ruleset generation."""
        try:
            st = os.stat(os.path.join(self.cfg.durability.journal_dir, "admin.log"))
            admin = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            admin = None
        return admin, int(generation)

    def postpone(self) -> None:
        """A periodic snapshot failed: the next try is snapshot.interval_s from now."""
        self.last_snapshot_s = time.monotonic()

    def tick(self, generation: int) -> None:
        """The supervisor loop's turn: the periodic snapshot when due; a failure is one line
        and a postponed next try, never the end of serving."""
        if not self.due():
            return
        try:
            self.periodic(generation)
        except (SnapshotError, OSError) as e:
            self.postpone()
            self.log(f"risk-engine: snapshot failed: {e}")

    @contextmanager
    def paused_workers(self, timeout_s: float = 5.0):
        """Hold every live worker between two batches (its journal synced, its last seq in
        the control block) for the duration of the block. A metrics scrape (another thread
        of this process) waits for the hold to end instead of competing with it for the GIL
        (``hold_lock``): the workers' requests queue meanwhile."""
        b = self.block
        pause = b.view("supervisor.pause")
        self.pause_epoch += 1
        epoch = self.pause_epoch
        n = b.n_workers
        self.hold_lock.acquire()
        pause[0] = epoch
        try:
            for r in self.rings:
                r.wake_worker()
            t_end = time.monotonic() + timeout_s
            alive = b.view("supervisor.worker_alive")
            while waiting := [w for w in range(n) if alive[w] and b.worker(w, "paused")[0] != epoch]:
                # a worker that died before pausing: end the hold now (the others' requests
                # would wait out timeout_s), and take no copy: its tables may hold a batch
                # it never journaled, past the seq it last published
                dead = [w for w in waiting if self.exited(w)]
                if dead:
                    raise SnapshotError(f"worker {dead[0]} exited before it paused")
                if time.monotonic() > t_end:
                    raise SnapshotError(f"workers did not pause within {timeout_s} s")
                time.sleep(0.0005)
            yield
        finally:
            pause[0] = 0
            self.hold_lock.release()

    def snapshot(self, generation: int, timeout_s: float = 5.0,
                 skip_unchanged: bool = False, copied=None) -> str | None:
        """Pause every worker between two batches, copy the feature tables, resume, then
        write the copy with each worker's journal seq (engine.snapshot). Returns the path.
        The pause lasts one memory copy of the tables; the file write happens after.
        ``skip_unchanged``: when every worker's journal seq, admin.log and the generation
        are those of the last snapshot written, copy and write nothing and return None.
        ``copied()``: called once the copy is taken, before the journals' fsync and the
        write (a take-over's partitions are served from then: engine.cluster.handover)."""
        d = self.cfg.durability
        if not d.journal_enabled:
            raise SnapshotError("snapshot: journal.enabled is false; a snapshot needs the journal")
        b = self.block
        n = b.n_workers
        fs = self.features.fs
        arrays = self._snapshot_buffers(fs)
        changes = self._changes(generation)   # same thread as admin changes: none meanwhile
        try:
            dst = tuple(arrays[name] for name in fs.arg_names())
            src = tuple(fs.arrays())
            ru0 = resource.getrusage(resource.RUSAGE_THREAD)
            t0 = time.monotonic_ns()
            with _realtime(), self.paused_workers(timeout_s):
                tp = time.monotonic_ns()
                seqs = {w: int(b.worker(w, "journal_seq")[0]) for w in range(n)}
                covers = (tuple(sorted(seqs.items())), *changes)
                if skip_unchanged and covers == self.written:
                    self.last_snapshot_s = time.monotonic()
                    return None
                if src:                    # one compiled call: the GIL never changes hands
                    _copy_tables(dst, src)
                tc = time.monotonic_ns()
            held = time.monotonic_ns() - t0
            ru1 = resource.getrusage(resource.RUSAGE_THREAD)
            b.view("supervisor.snapshot_pause_ns")[0] = held
            mx = b.view("supervisor.snapshot_pause_max_ns")
            mx[0] = max(int(mx[0]), held)
        except SnapshotError as e:
            b.view("supervisor.snapshot_errors")[0] += 1
            raise SnapshotError(f"snapshot: {e}") from None
        if copied is not None:
            copied()
        t1 = time.monotonic_ns()
        self._fsync_journals()             # the journal up to `seqs` is durable before the
        t2 = time.monotonic_ns()
        store = SnapshotStore(d.snapshot_dir, keep=d.snapshot_keep)
        path = store.write(arrays, seqs, generation=generation)   # snapshot that names it
        b.view("supervisor.snapshots")[0] += 1
        # wall time at the end; hold, journal fsync and file write durations (ns); how often
        # this thread was preempted, and how often it waited (GIL, sleeps), during the hold;
        # the hold's two parts: waiting for the workers to pause, and the copy (ns)
        EventLog(b.view("supervisor.snapshot_log")).add(
            held, t2 - t1, time.monotonic_ns() - t2, ru1.ru_nivcsw - ru0.ru_nivcsw,
            ru1.ru_nvcsw - ru0.ru_nvcsw, tp - t0, tc - tp)
        for w in range(n):
            b.worker(w, "retain_seq")[0] = store.oldest_journal_seq(w)
        self.written = covers
        self.last_snapshot_s = time.monotonic()
        return path

    def _snapshot_buffers(self, fs) -> dict:
        """One reusable copy buffer per feature table, its pages (and this process's mapping
        of the table) faulted in BEFORE the workers are held: a fresh 70 MiB copy faulted
        about 36k pages inside the pause, long enough to miss 50 ms deadlines."""
        bufs = self._bufs
        for name, a in zip(fs.arg_names(), fs.arrays()):
            buf = bufs.get(name)
            if buf is None or buf.shape != a.shape or buf.dtype != a.dtype:
                buf = bufs[name] = np.empty_like(a)
                _touch_pages(buf, write=True)
            _touch_pages(a, write=False)
        tiny = tuple(np.zeros(1, a.dtype) for a in fs.arrays())
        if tiny:                            # the copy kernel compiled (or loaded from the
            _copy_tables(tiny, tiny)        # cache) here, not inside the hold
        return bufs

    def _fsync_journals(self) -> None:
        """fsync every worker's newest journal records (shared file mappings: an fsync from
        this process writes back the pages the workers dirtied), an unpublished successor
        segment included. Older segments were synced before their successor was published."""
        jdir = self.cfg.durability.journal_dir
        rs = journal_dtype(self.cfg.schema.dtype).itemsize
        for w in list_writers(jdir):
            sync_tail(jdir, w, self.cfg.schema.hash, rs)
