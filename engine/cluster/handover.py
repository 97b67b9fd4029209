"""A taken partition's state written on the supervisor's thread (docs/CLUSTER.md, "Failover in
serve").

The lease agent's take-over (engine.cluster.replicate) reads the snapshot object and the
records after it from NATS on its own thread, then hands them here as a job; the supervisor's
loop (``ClusterNode.poll``) runs the jobs, and only there are the partition's rows written:
- the rows restored and the records applied (engine.cluster.partstate) on the thread that
  also rebuilds the tables after a worker crash (engine.recovery_state.after_crash), so the
  two never write the same rows at once, and a rebuild can only come wholly before a job
  (then the job restores over it) or after (then it starts from the snapshot below);
- then one local snapshot (engine.snapshot_coordinator) for every job of the round, before
  any of them is servable: a worker crash or a restart rebuilds from the node's own snapshot
  and journal, which from then on hold the restored rows;
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
    done: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


WINDOW_MARGIN_S = 5.0        # the NATS server's clock (message times) against this machine's


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

    def __init__(self, sup, state):
        self.sup, self.state = sup, state
        self.queue: queue.SimpleQueue[TakeJob] = queue.SimpleQueue()
        self.want = sup.block.view("supervisor.window_feed")
        self.fed = sup.block.view("ingress.window_fed")

    def submit(self, job: TakeJob) -> concurrent.futures.Future:
        self.queue.put(job)
        return job.done

    def run_pending(self) -> int:
        """Run every queued job (module doc); returns how many ran."""
        jobs, ok = [], []
        while True:
            try:
                jobs.append(self.queue.get_nowait())
            except queue.Empty:
                break
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
        try:
            if self.sup.cfg.durability.journal_enabled:   # (no journal: a crash rebuilds nothing)
                self.sup.snapshot()           # the restored rows, durable on this node
            for j in ok:
                j.snapshot_ns = now_ns()
            ents, slots = window_feed.entries([r for j in ok for r in (*j.window, *j.records)])
            seq = int(self.want[0]) + 1
            window_feed.write(self.sup.run_dir, seq, ents, slots)
            self.want[0] = seq
        except Exception as e:                # noqa: BLE001  none of them is servable
            for j in ok:
                j.done.set_exception(e)
            return len(jobs)
        for j in ok:
            j.done.set_result(seq)
        return len(jobs)

    def fed_state(self, seq: int) -> str | None:
        """"fed" once the ingress inserted feed ``seq``, "refused" if it could not read it,
        None while it has not got to it."""
        if int(self.fed[1]) == seq:
            return "refused"
        return "fed" if int(self.fed[0]) >= seq else None
