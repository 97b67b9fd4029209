"""Replication on a serving node (docs/CLUSTER.md, "Serving with cluster:"): the journal tailer
(engine.cluster.tailer; with ``ack: sync`` it steps as soon as a worker rings its eventfd,
engine.cluster.tailwake, and its replication marks release the workers' held replies:
engine.ackgate) and the take-over, both on the lease agent's event loop (AgentThread
``side``), so a fence and a tailer step never interleave.

``prepare(p, rev)`` and ``end(p)`` are the lease agent's hooks. ``prepare`` takes p before the
ownership table shows the lease (engine.cluster.takeover): it fences p at the lease's
revision, so the previous owner's later publishes are refused, then replaces p's rows in the
shared feature tables by the newest valid snapshot object plus the stream's records after it
up to the fence (engine.cluster.partstate). A take that fails (a corrupt stream, NATS down, a
full table) raises: the agent releases the lease and p is not served here. ``end`` (a lease
released or lost) stops publishing p after the records journaled until then.

Every ``snapshot.interval_s`` (the engine's own snapshot interval) it writes one snapshot
object per partition it publishes whose subject moved since its last one, covering its last
publish there (engine.cluster.takeover.write_snapshot: computed from the stream in scratch
tables of its own, so a taker replays only what came after).
"""
from __future__ import annotations

import asyncio
import time

import nats
import nats.errors

from engine.cluster.handover import TakeJob, window_records
from engine.cluster.lag import PUBLISH_S, LagReport, lag_key
from engine.cluster.ownership import now_ns
from engine.cluster.replog import ReplicationError, ReplicationLog
from engine.cluster.snapstore import SnapshotObjects
from engine.cluster.tailer import JournalTailer
from engine.cluster.takeover import take_partition, write_snapshot
from engine.cluster.trim import trim_below
from ingress.partmap import BUCKET as LEASE_BUCKET
from shm.runtime.nats_auth import auth_options
from shm.runtime.nats_log import ConnectionLog

IDLE_S = 0.02                # a step that read nothing waits this long (the async window's floor)
SYNC_IDLE_S = 0.001          # ack: sync: replies wait for the step that publishes their records;
                             # between full steps (every IDLE_S) a step runs only when a worker's
                             # journaled_seq mark is past the tailer's cursor: looked at when a
                             # worker rings (``wake``), else every SYNC_IDLE_S
ERROR_PAUSE_S = 0.5
HANDOVER_TIMEOUT_S = 30.0    # the supervisor's round (a snapshot) plus the ingress's feed
_TRANSIENT = (ReplicationError, nats.errors.Error, asyncio.TimeoutError, OSError)


class Replicator:
    def __init__(self, cfg, table, log, open_timeout_s: float, state, scratch, jobs=None, marks=None,
                 wake=None):
        """``state``: the node's engine.cluster.partstate.PartitionState (what a take-over
        restores into); ``scratch()``: a PartitionState over tables of its own (made at the
        first snapshot write), where snapshot objects are computed; ``jobs``: the node's
        engine.cluster.handover.TakeJobs (None: the take writes ``state`` on this thread);
        ``marks``: the node's shm.replication.ReplicationMarks (what ack: sync workers wait on);
        ``wake``: an engine.cluster.tailwake.TailerWake the workers ring (ack: sync)."""
        self.cfg, self.table, self.say, self.state, self.jobs = cfg, table, log, state, jobs
        self.marks = marks
        self.idle_s = SYNC_IDLE_S if marks is not None and cfg.cluster.ack == "sync" else IDLE_S
        self.wake = wake if self.idle_s < IDLE_S else None
        self.scratch, self._scratch = scratch, None
        self.snapshot_interval_s = float(cfg.durability.snapshot_interval_s)
        self.snapped: dict[int, int] = {}     # p -> stream seq of this node's last object of p
        self.snapshot_errors = 0
        self.open_timeout_s = open_timeout_s
        self.rlog: ReplicationLog | None = None
        self.snaps: SnapshotObjects | None = None
        self.tailer: JournalTailer | None = None
        self.errors = 0              # tailer steps that failed (logged once per new message)
        self.fence_refused = 0
        self.taken = 0               # partitions taken over (restored and replayed)
        self.reading = 0             # takes still reading NATS (not handed over yet)
        self.replayed_records = 0
        self.lag = LagReport(cfg.cluster.node)    # engine.cluster.lag: per partition, to KV
        self.lag_errors = 0
        self.trims = 0               # subjects trimmed below a verified snapshot object
        self.trim_refused = 0        # snapshot objects that failed their read-back: no trim
        self.conn_log = ConnectionLog("risk-engine: cluster: replication", log)
        self.timeline: dict[int, dict[str, int]] = {}   # p -> its last take's steps (node.py logs them)
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        c = self.cfg.cluster
        nc = await asyncio.wait_for(nats.connect(
            list(c.servers), **auth_options(c.credentials), name=f"risk-engine {c.node} replication",
            connect_timeout=2, reconnect_time_wait=0.25, max_reconnect_attempts=-1,
            **self.conn_log.callbacks()), self.open_timeout_s)      # a line per state change
        snapping = lagging = None    # the snapshot objects' round and the lag, tasks beside the tailer
        try:
            js = nc.jetstream(timeout=2.0)
            s = self.cfg.schema
            self.rlog = ReplicationLog(js, c.node, s.dtype, s.shard_key, c.partitions)
            await self.rlog.ensure_stream(min(3, len(c.servers)))
            self.snaps = SnapshotObjects(js, self.rlog, s.hash)
            await self.snaps.open(min(3, len(c.servers)))
            self.tailer = JournalTailer(self.rlog, self.cfg.durability.journal_dir, s.dtype, s.hash,
                                        self.table, marks=self.marks)
            self._ready.set()
            lagging = asyncio.ensure_future(self._lag_loop(js, stop))
            if self.wake is not None:
                self.wake.attach()
            due = time.monotonic() + self.snapshot_interval_s
            full_due = 0.0
            while not stop.is_set():
                left = full_due - time.monotonic()
                if self.idle_s < IDLE_S and left > 0 and not self.marks.waiting(self.tailer.cursor):
                    if self.wake is None:               # ack: sync, no worker waits
                        await asyncio.sleep(self.idle_s)
                    else:                               # until a worker rings, at most until
                        await self.wake.wait(left)      # the next full step
                    continue
                full_due = time.monotonic() + IDLE_S
                if time.monotonic() >= due and (snapping is None or snapping.done()):
                    due = time.monotonic() + self.snapshot_interval_s
                    snapping = asyncio.ensure_future(self._snapshots())  # the tailer goes on
                try:
                    async with self._lock:
                        await self.tailer.step()
                except _TRANSIENT as e:
                    self._error(e)
                    await self._wait(stop, ERROR_PAUSE_S)
                    continue
                if not self.tailer.read_last_step:      # the loop checks stop; no task per wait
                    await (asyncio.sleep(self.idle_s) if self.wake is None else self.wake.wait(self.idle_s))
        finally:
            if self.wake is not None:
                self.wake.detach()
            for t in (snapping, lagging):
                if t is not None:
                    t.cancel()
                    await asyncio.gather(t, return_exceptions=True)
            self.conn_log.closing()
            await nc.close()

    async def prepare(self, p: int, rev: int) -> bool:
        """The lease agent's hook: take p at ``rev`` before it is served (module doc). False:
        the fence was refused, a newer term is on the stream (the agent releases the lease)."""
        await asyncio.wait_for(self._ready.wait(), self.open_timeout_s)

        times = self.timeline[p] = {"prepare": now_ns()}    # CLOCK_BOOTTIME, per step

        async def fence(q: int, r: int) -> int | None:
            async with self._lock:
                f = await self.tailer.fence(q, r)
            times["fenced"] = now_ns()
            return f

        def restored(arrays) -> None:
            times["snapshot"] = now_ns()
            if self.jobs is None:           # no supervisor (tests): the rows written here
                self.state.restore(p, arrays)
            else:                           # read here, written by the supervisor's thread
                job.arrays = arrays
        job = TakeJob(p)
        apply = self.state.apply if self.jobs is None else job.records.append
        self.reading += 1                   # the supervisor gathers the takes of one round
        try:
            t = await take_partition(p, rev, fence, self.snaps, restored, apply, self.say)
            if t is None:
                self.fence_refused += 1
                return False
            times["replayed"] = now_ns()
            if self.jobs is not None:
                job.window = await window_records(self.rlog, p, self.cfg.ingress.dedup_window_s, t.snapshot_seq)
                times["window_read"] = now_ns()
        finally:
            self.reading -= 1
        if self.jobs is not None:
            await self._hand_over(job)
            times.update(rows=job.rows_ns, snapshotted=job.snapshot_ns, fed=now_ns())
        self.taken += 1
        self.replayed_records += t.replayed_records
        self.say(f"risk-engine: cluster: partition {p}: taken at revision {rev}: snapshot "
                 f"{t.snapshot or 'none'} (stream seq {t.snapshot_seq}) + {t.replayed_records} "
                 f"record(s) replayed up to seq {t.fence_seq}")
        return True

    async def _hand_over(self, job) -> None:
        """The supervisor's thread writes p's rows, snapshots them, feeds the decisions to the
        ingress's window (engine.cluster.handover); p is servable once the ingress has them."""
        fut = self.jobs.submit(job)
        try:
            seq = await asyncio.wait_for(asyncio.wrap_future(fut), HANDOVER_TIMEOUT_S)
        except asyncio.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"partition {job.partition}: the supervisor did not write the taken "
                               f"rows within {HANDOVER_TIMEOUT_S:g} s") from None
        end = time.monotonic() + HANDOVER_TIMEOUT_S
        while (got := self.jobs.fed_state(seq)) is None:
            if time.monotonic() > end:
                raise TimeoutError(f"partition {job.partition}: the ingress did not take window "
                                   f"feed {seq} within {HANDOVER_TIMEOUT_S:g} s")
            await asyncio.sleep(0.005)
        if got == "refused":
            raise RuntimeError(f"partition {job.partition}: the ingress refused window feed {seq}")

    async def write_snapshots(self) -> int:
        """One snapshot object per partition this node publishes (fenced and shown in the
        table) whose subject moved since its last one, covering its last publish there."""
        if self._scratch is None:
            self._scratch = self.scratch()
        n = 0
        for p in sorted(self.table.owned()):
            upto = self.rlog.last.get(p, 0) if p in self.rlog.fenced else 0
            if upto <= self.snapped.get(p, 0):
                continue
            name = await write_snapshot(p, upto, self.snaps, self._scratch, self.say)
            self.snapped[p] = upto
            n += 1
            done = await trim_below(self.snaps, p, name, upto, self.say)   # engine.cluster.trim
            self.trims += done == "trimmed"
            self.trim_refused += done == "refused"
        return n

    async def _lag_loop(self, js, stop: asyncio.Event) -> None:
        """Every PUBLISH_S: the lag per partition (engine.cluster.lag) for the metrics, and
        ``lag.NODE`` in the lease bucket for `cluster status` when it changed."""
        subj = f"$KV.{LEASE_BUCKET}.{lag_key(self.cfg.cluster.node)}"
        while not stop.is_set():
            await self._wait(stop, PUBLISH_S)
            try:
                self.lag.update(self.tailer)
                v = self.lag.due()
                if v is not None:
                    await js.publish(subj, v, timeout=2.0)
                    self.lag.written(v)
            except Exception as e:       # NATS down, a journal being rotated: the next round
                self.lag_errors += 1
                if self.lag_errors == 1:
                    self.say(f"risk-engine: cluster: replication lag: {type(e).__name__}: {e}; "
                             f"retried every {PUBLISH_S:g} s (counted in lag_errors)")

    async def _snapshots(self) -> None:
        try:
            await self.write_snapshots()
        except Exception as e:          # NATS, a refused object, a full table: the next round
            self.snapshot_errors += 1
            self.say(f"risk-engine: cluster: snapshot objects: {type(e).__name__}: {e}; the next "
                     f"try in {self.snapshot_interval_s:g} s (a taker replays more meanwhile)")

    def end(self, p: int) -> None:
        """The lease agent's hook: p's lease was released or lost; its records journaled until
        now still go out, none after (JournalTailer.end_term)."""
        if self.tailer is not None:
            self.tailer.end_term(p)

    def _error(self, e: BaseException) -> None:
        self.errors += 1
        why = f"{type(e).__name__}: {e}"
        if why != self._last_error:
            self._last_error = why
            self.say(f"risk-engine: cluster: replication: {why}; retrying (unpublished records "
                     f"wait in the journal)")

    @staticmethod
    async def _wait(stop: asyncio.Event, s: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), s)
        except asyncio.TimeoutError:
            pass
