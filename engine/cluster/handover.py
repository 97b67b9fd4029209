"""A taken partition's state written on the supervisor's thread (docs/CLUSTER.md, "Failover in
serve").

The lease agent's take-over (engine.cluster.replicate) reads the snapshot object and the
records after it from NATS on its own thread, then hands them here as a job; the supervisor's
loop (``ClusterNode.poll``) runs the jobs, and only there are the partition's rows written:
- the rows restored and the records applied (engine.cluster.partstate) on the thread that
  also rebuilds the tables after a worker crash (engine.recovery_state.after_crash), so the
  two never write the same rows at once, and a rebuild can only come wholly before a job
  (then the job restores over it) or after (then it starts from the snapshot below);
- then one local snapshot (engine.snapshot_coordinator) for every job of the round (a round
  waits up to GATHER_NS for takes still reading NATS, so a kill's partitions share one): a worker
  crash rebuilds from the node's own snapshot and journal, which from then on hold the
  restored rows. The jobs are servable once the snapshot's copy of the tables is taken
  (the workers held for one memory copy), not once its file is written: that write, and
  the journals' fsync before it, run on this same thread, so a rebuild after a worker crash
  can only start once the file is there. A write that fails after that gives the round's
  partitions up (``give_up``: no longer served, their leases released; the stream still
  has everything, so the next take restores them exactly); a snapshot that fails before the
  copy fails the jobs (the agent releases their leases). A restart needs none of it: it
  takes its partitions again from the stream;
- then the records' decisions go to the ingress's idempotency window (ingress.window_feed),
  so a request the previous owner decided and a client resends here gets that decision back:
  the records replayed, and before them those the snapshot object covers but that were
  stored within ``ingress.dedup_window_s`` (plus WINDOW_MARGIN_S for the machines' clocks),
  read for the window only (``window_records``).
The job's result is the feed's seq; the taker serves the partition once the ingress echoed it.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import queue
from dataclasses import dataclass, field

from engine.cluster.ownership import now_ns
from ingress import window_feed


@dataclass
class TakeJob:
    partition: int
    arrays: dict | None = None           # the snapshot object's rows (None: none)
    records: list = field(default_factory=list)       # journal record arrays, stream order
    window: list = field(default_factory=list)        # older ones, for the window only
    rows_ns: int = 0                     # CLOCK_BOOTTIME: the rows written, the local snapshot
    snapshot_ns: int = 0                 # taken (the failover timeline: engine.cluster.node)
    queued_ns: int = 0                   # when the supervisor's thread first saw it
    done: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


WINDOW_MARGIN_S = 5.0        # the NATS server's clock (message times) against this machine's
GATHER_NS = 200_000_000      # the longest a round waits for takes still reading (run_pending)


async def window_records(rlog, p: int, window_s: float, upto: int) -> list:
    """The record arrays of partition p's messages the stream stored within the last
    ``window_s`` (+ WINDOW_MARGIN_S) up to stream seq ``upto`` (the snapshot object's), in
    stream order, each checked (ReplicationLog.replay)."""
    if upto <= 0 or window_s <= 0:
        return []
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=window_s + WINDOW_MARGIN_S)
    return [m.records async for m in rlog.replay(p, end_seq=upto, since=since) if m.kind == "rec"]


class TakeJobs:
    """Jobs from the agent's thread, run by the supervisor's (module doc)."""

    def __init__(self, sup, state, give_up=None, reading=None):
        """``give_up(partitions)``: stop serving them and release their leases, returning
        once they are no longer served (the node's lease agent); ``reading()``: how many
        takes are still reading NATS (their jobs will come soon)."""
        self.sup, self.state = sup, state
        self.give_up = give_up or (lambda ps: None)
        self.reading = reading or (lambda: 0)
        self._held: list[TakeJob] = []       # jobs waiting for the rest of their round
        self.queue: queue.SimpleQueue[TakeJob] = queue.SimpleQueue()
        self.want = sup.block.view("supervisor.window_feed")
        self.fed = sup.block.view("ingress.window_fed")

    def submit(self, job: TakeJob) -> concurrent.futures.Future:
        self.queue.put(job)
        return job.done

    def run_pending(self) -> int:
        """Run every queued job (module doc) as one round; returns how many ran. While other
        takes are still reading (a kill hands a node several partitions at once, their reads
        ending a few ms apart) a round waits for them up to GATHER_NS: one local snapshot for
        all, instead of each next round waiting for the previous one's file write."""
        while True:
            try:
                j = self.queue.get_nowait()
            except queue.Empty:
                break
            j.queued_ns = now_ns()
            self._held.append(j)
        if not self._held or (self.reading() and now_ns() - self._held[0].queued_ns < GATHER_NS):
            return 0
        jobs, ok, self._held = self._held, [], []
        for j in jobs:
            if not j.done.set_running_or_notify_cancel():
                continue                      # the take was given up meanwhile
            try:
                self.state.restore(j.partition, j.arrays)
                for r in j.records:
                    self.state.apply(r)
                j.rows_ns = now_ns()
                ok.append(j)
            except Exception as e:            # noqa: BLE001  the take fails with it
                j.done.set_exception(e)
        if not ok:
            return len(jobs)
        served: list[TakeJob] = []

        def servable() -> None:               # the copy holds the taken rows (module doc)
            ents, slots = window_feed.entries([r for j in ok for r in (*j.window, *j.records)])
            seq = int(self.want[0]) + 1
            window_feed.write(self.sup.run_dir, seq, ents, slots)
            self.want[0] = seq
            for j in ok:
                j.snapshot_ns = now_ns()
                j.done.set_result(seq)
            served.extend(ok)
        try:
            if self.sup.cfg.durability.journal_enabled:   # (no journal: a crash rebuilds nothing)
                self.sup.snapshot(copied=servable)         # the restored rows, durable on this node
            else:
                servable()
        except Exception as e:                # noqa: BLE001  not durable here: not served here
            if not served:
                for j in ok:
                    j.done.set_exception(e)
                return len(jobs)
            ps = sorted(j.partition for j in served)
            self.sup.log(f"risk-engine: cluster: partitions {ps}: the local snapshot holding their "
                         f"taken rows failed ({type(e).__name__}: {e}); giving them up (released: "
                         f"another take restores them from the stream)")
            self.give_up(ps)                  # returns once they are no longer served
        return len(jobs)

    def fed_state(self, seq: int) -> str | None:
        """"fed" once the ingress inserted feed ``seq``, "refused" if it could not read it,
        None while it has not got to it."""
        if int(self.fed[1]) == seq:
            return "refused"
        return "fed" if int(self.fed[0]) >= seq else None
