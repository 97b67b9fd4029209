"""``cluster.ack: sync`` in a worker: a batch's replies reach the response ring only once the
node's journal tailer has acknowledged their records in the replication stream (R3 quorum),
read from the node's ``replication`` segment (shm.replication). docs/CLUSTER.md, "Serving
with cluster:".

Why the worker and not the ingress holds them: the worker knows each batch's journal seqs
(it just appended them), and every reply path of the ingress (fast path, compiled loop,
general path) drains the response ring as before, unchanged. Group commit comes for free:
the tailer publishes every record committed since its last step in one message per writer
and partition, so a step's acknowledgement releases every batch it covered. The gate rings
the tailer's eventfd when it holds a batch (engine.cluster.tailwake), so the step comes at
once; while it holds replies it looks at the marks every POLL_S.

Outcomes of a held batch, in batch order (FIFO), judged on the marks:
- its records are in the stream: published as decided;
- resolved but possibly never published (fenced off, journaled after the term ended, a
  partition this node does not publish): every journaled row is answered with
  ``journal.on_unavailable``'s action flagged DEFAULT_REPLICATION (error REPLICATION_FAILED,
  docs/PROTOCOL.md), never as a decision. Judged conservatively: a batch whose first record
  is at or below the writer's highest failed seq counts as failed;
- never resolved (NATS unreachable: the tailer retries, the records wait in the journal):
  held; the ingress's deadline answers the request TIMEOUT and drops the late reply.
At most ``capacity`` events are held; beyond, the worker stops taking requests (the request
ring fills and the ingress answers OVERLOADED) until the marks move.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from shm.doorbell import EventfdDoorbell
from shm.names import segment_name
from shm.replication import SEGMENT, ReplicationMarks
from shm.segment import Segment
from shm.types import DecisionFlag, ErrorCode

POLL_S = 0.0002              # a worker with held replies looks at the marks this often


def publish_responses(rings, o: np.ndarray, stop: np.ndarray) -> None:
    """``o`` onto the response ring, waiting for room (the ingress always drains) unless the
    workers are told to stop."""
    while not rings.response.try_publish(o):
        if stop[0] >= 2:
            return
        rings.response_full_idle.wait()


def send_replies(gate, rings, o: np.ndarray, stop: np.ndarray, first_seq: int, last_seq: int) -> None:
    """A batch's replies: published now, or with a gate (ack: sync) and records
    ``first_seq..last_seq`` journaled for its first rows, held until the marks resolve them."""
    if gate is not None and last_seq >= first_seq:
        gate.hold(o, first_seq, last_seq)
    else:
        publish_responses(rings, o, stop)


class ReplyGate:
    def __init__(self, rings, marks: ReplicationMarks, writer: int, stop: np.ndarray, action: int,
                 capacity: int, failed: np.ndarray | None = None):
        self.rings, self.marks, self.writer, self.stop = rings, marks, writer, stop
        self.action, self.capacity = action, capacity
        self.held: deque = deque()     # (response slots, first seq, last seq, journaled rows)
        self.held_events = 0
        # decisions answered REPLICATION_FAILED: the worker's control-block cell, which the
        # exporter reads (risk_replication_failed_total{worker})
        self.failed = np.zeros(1, np.int64) if failed is None else failed
        self.segment: Segment | None = None
        self.bell: EventfdDoorbell | None = None   # the tailer's (engine.cluster.tailwake)

    @classmethod
    def attach(cls, cfg, plan: dict, rings, writer: int, stop, action: int, block) -> "ReplyGate | None":
        """The gate of a worker of a cluster node with ``ack: sync`` (counting into its cell of
        the control ``block``); None otherwise."""
        if cfg.cluster is None or cfg.cluster.ack != "sync" or not cfg.durability.journal_enabled:
            return None
        seg = Segment.attach(segment_name(plan["instance"], SEGMENT, plan["owner_pid"]))
        gate = cls(rings, ReplicationMarks(seg.buf), writer, stop, action, rings.response.capacity,
                   block.worker(writer, "replication_failed"))
        gate.segment = seg
        if plan.get("replication_eventfd", -1) >= 0:
            gate.bell = EventfdDoorbell(plan["replication_eventfd"])
        return gate

    def hold(self, o: np.ndarray, first_seq: int, last_seq: int) -> None:
        """Hold the replies ``o`` (its first rows have the records first..last_seq, the rest
        none: JOURNAL_UNAVAILABLE) until the marks resolve them, publishing what is resolved."""
        while self.held_events + len(o) > self.capacity and self.stop[0] < 2:
            if not self.release():
                time.sleep(POLL_S)
        self.held.append((o.copy(), first_seq, last_seq, last_seq - first_seq + 1))
        self.marks.journaled_seq[self.writer] = last_seq   # the tailer's cue (shm.replication),
        if self.bell is not None:                          # then its wake-up
            self.bell.ring()
        self.held_events += len(o)
        self.release()

    def release(self) -> int:
        """Publish the held batches the marks resolve, oldest first: the events released."""
        n = 0
        while self.held:
            o, first, last, k = self.held[0]
            st = self.marks.state(self.writer, first, last)
            if st == 0:
                break
            if st < 0:
                self._failed(o[:k])
            publish_responses(self.rings, o, self.stop)
            if self.stop[0] >= 2:
                return n
            self.held.popleft()
            self.held_events -= len(o)
            n += len(o)
        return n

    def wait(self) -> bool:
        """An idle worker's turn: release what is resolved; True (and a POLL_S sleep) while
        replies are still held, so the caller polls again instead of sleeping on its doorbell."""
        if not self.held:
            return False
        self.release()
        if self.held:
            time.sleep(POLL_S)
        return True

    def _failed(self, r: np.ndarray) -> None:
        r["action"] = self.action
        r["flags"] = DecisionFlag.DEFAULT_REPLICATION
        r["score"] = 0.0
        r["nfired"] = 0
        r["error"] = ErrorCode.REPLICATION_FAILED
        self.failed[0] += len(r)      # one writer: this worker

    def close(self) -> None:
        self.marks = None
        if self.segment is not None:
            self.segment.close()
            self.segment = None
