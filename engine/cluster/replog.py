"""Journal records replicated to a NATS JetStream stream, one subject per partition, fenced
by lease revision (docs/CLUSTER.md, "Replication").

One stream (``RISK_ENGINE_JOURNAL``), subject ``rj.<P>`` per partition, replicated
min(3, servers) times. A message is either a **fence** (a node starting its term on the
partition) or **records**: 1..N journal records of one writer, the journal's own fixed-layout
bytes with their check words, in seq order. Headers: ``Rj-Kind`` (fence | rec), ``Rj-Rev``
(the lease revision, the fencing token), ``Rj-Node``, ``Rj-Writer``, ``Rj-First`` /
``Rj-Last`` / ``Rj-Count`` (the records' journal seqs), ``Rj-Done`` (writer:seq,...: every
record of this partition from that writer up to that seq is published or belongs to
another term; what a restarted tailer resumes from).

Fencing: every publish expects the subject's last stream sequence
(``Nats-Expected-Last-Subject-Sequence``, checked by the stream's Raft leader). A node taking
a partition publishes a fence expecting the last sequence it read, with a revision above the
one in that message, so the previous owner's next publish expects a sequence that is no
longer the last and is refused: it counts the refusal, marks the partition lost and never
retries it. A publish whose answer is lost (timeout, a server killed) is retried with the same
expectation, which the server refuses if the first one was stored; then the last message is
read back and, if it is this very message, the publish counts as done: never duplicated.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors as jserr
import numpy as np
from nats.js import api

from engine.cluster.jsopen import READY_S, opened
from engine.cluster.partition import partition_of_keys
from shm.journal_format import checksum, journal_dtype

STREAM = "RISK_ENGINE_JOURNAL"
PREFIX = "rj"
H_KIND, H_REV, H_NODE, H_WRITER = "Rj-Kind", "Rj-Rev", "Rj-Node", "Rj-Writer"
H_FIRST, H_LAST, H_COUNT, H_DONE = "Rj-First", "Rj-Last", "Rj-Count", "Rj-Done"
WRONG_LAST_SEQ = (10071, 10164)          # the server's codes for a refused expectation
REPLAY_WAIT_S = 10.0                     # a replay waiting this long for the next message fails
RETRY_S = 30.0                           # a publish whose answer is lost is retried this long
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TRANSIENT = (nats.errors.TimeoutError, nats.errors.NoRespondersError, jserr.NoStreamResponseError,
              nats.errors.ConnectionClosedError, asyncio.TimeoutError)


class ReplicationError(RuntimeError):
    """The stream cannot be used, or a publish stayed unanswered for RETRY_S."""


class ReplicationCorruptError(ReplicationError):
    """A message read back fails its checks (check word, headers, partition, term order)."""


@dataclass(frozen=True)
class Message:
    """One message of a partition's subject, decoded and checked."""
    stream_seq: int
    kind: str                    # "fence" | "rec"
    rev: int
    node: str
    done: dict                   # writer -> seq (Rj-Done)
    writer: int = -1
    records: np.ndarray | None = None     # journal dtype, for kind "rec"


@dataclass
class Counters:
    published_msgs: int = 0
    published_records: int = 0
    refused: int = 0             # publishes refused by fencing (never retried)
    retried: int = 0             # publishes repeated after a lost answer
    fences: int = 0
    lost: list = field(default_factory=list)     # (partition, revision) refused


def subject(prefix: str, p: int) -> str:
    return f"{prefix}.{p}"


def encode_done(done: dict) -> str:
    return ",".join(f"{w}:{s}" for w, s in sorted(done.items()))


def decode_done(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        w, s = part.split(":")
        out[int(w)] = int(s)
    return out


class ReplicationLog:
    """The stream through one JetStream context, for one node (``node``) and one schema.

    ``publish`` / ``fence`` are coroutines on the caller's event loop; one partition's
    publishes must not overlap (each expects the previous one's sequence); different
    partitions' may (asyncio.gather)."""

    def __init__(self, js, node: str, event_dtype: np.dtype, shard_key: str, partitions: int,
                 stream: str = STREAM, prefix: str = PREFIX, timeout_s: float = 2.0):
        for k, v in (("node", node), ("stream", stream), ("prefix", prefix)):
            if not _NAME.match(v):
                raise ReplicationError(f"{k}={v!r}: letters, digits, _ and - only (1..64)")
        self.js, self.node, self.stream, self.prefix = js, node, stream, prefix
        self.dtype = journal_dtype(event_dtype)
        self.shard_key, self.partitions, self.timeout_s = shard_key, partitions, timeout_s
        self.last: dict[int, int] = {}       # p -> stream seq of our last publish (expectation)
        self.fenced: dict[int, int] = {}     # p -> revision of our current term's fence
        self.counters = Counters()

    async def ensure_stream(self, replicas: int, ready_s: float = READY_S) -> None:
        """Create the stream if missing (file storage, ``replicas`` copies); return once it is
        placed and has a leader, waiting up to ``ready_s`` for each (jsopen)."""
        await opened(self.js, self.stream, lambda: self.js.stream_info(self.stream),
                     lambda: self.js.add_stream(api.StreamConfig(
                         name=self.stream, subjects=[f"{self.prefix}.*"], num_replicas=replicas,
                         storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
                         description="risk-engine journal records per partition")),
                     jserr.NotFoundError, f"stream {self.stream}", ready_s)

    # --- reading --------------------------------------------------------------------------

    async def last_message(self, p: int) -> Message | None:
        """The partition's last message, checked (None: the subject is empty)."""
        try:
            m = await self.js.get_msg(self.stream, subject=subject(self.prefix, p))
        except jserr.NotFoundError:
            return None
        return self.decode(p, m.seq, m.headers or {}, m.data or b"")

    def decode(self, p: int, stream_seq: int, headers: dict, data: bytes) -> Message:
        """Check one message of partition ``p``; raises ReplicationCorruptError naming it."""
        where = f"stream={self.stream} subject={subject(self.prefix, p)} seq={stream_seq}"
        try:
            kind, rev, node = headers[H_KIND], int(headers[H_REV]), headers[H_NODE]
            done = decode_done(headers.get(H_DONE, ""))
        except (KeyError, ValueError) as e:
            raise ReplicationCorruptError(f"{where}: malformed headers ({e!r})") from None
        if kind not in ("fence", "rec") or rev <= 0 or not _NAME.match(node):
            raise ReplicationCorruptError(f"{where}: kind={kind!r} rev={rev} node={node!r}")
        if kind == "fence":
            if data:
                raise ReplicationCorruptError(f"{where}: a fence with a {len(data)} B payload")
            return Message(stream_seq, kind, rev, node, done)
        try:
            writer, first, last, count = (int(headers[h]) for h in (H_WRITER, H_FIRST, H_LAST, H_COUNT))
        except (KeyError, ValueError) as e:
            raise ReplicationCorruptError(f"{where}: malformed record headers ({e!r})") from None
        rs = self.dtype.itemsize
        if count <= 0 or len(data) != count * rs:
            raise ReplicationCorruptError(f"{where}: payload {len(data)} B for count={count} "
                                          f"records of {rs} B")
        recs = np.frombuffer(bytearray(data), self.dtype)
        bad = np.flatnonzero(checksum(recs) != recs["check"])
        if len(bad):
            raise ReplicationCorruptError(f"{where}: record {int(bad[0])} of {count} "
                                          f"(journal seq {int(recs['seq'][bad[0]])}): check word mismatch")
        seqs = recs["seq"].astype(np.int64)
        if int(seqs[0]) != first or int(seqs[-1]) != last or (count > 1 and np.any(np.diff(seqs) <= 0)):
            raise ReplicationCorruptError(f"{where}: record seqs {int(seqs[0])}..{int(seqs[-1])} "
                                          f"do not match Rj-First={first} Rj-Last={last} in order")
        parts = self.partition_of(recs)
        if np.any(parts != p):
            i = int(np.flatnonzero(parts != p)[0])
            raise ReplicationCorruptError(f"{where}: journal seq {int(seqs[i])} belongs to "
                                          f"partition {int(parts[i])}")
        return Message(stream_seq, kind, rev, node, done, writer, recs)

    def partition_of(self, records: np.ndarray) -> np.ndarray:
        """The partition of each journal record: its event's shard key as the ingress hashes it
        (any integer width; signed keys by their 64-bit pattern)."""
        return partition_of_keys(records["event"][self.shard_key], self.partitions)

    # --- writing --------------------------------------------------------------------------

    async def fence(self, p: int, revision: int, new_term_done: dict, attempts: int = 20,
                    resume: bool = True) -> Message | None:
        """Start this node's term on ``p`` at lease ``revision``. If the subject's last message
        is this node's (nobody served ``p`` since), the term continues: its Rj-Done is kept
        and returned, so the records it did not publish yet follow. Otherwise the new term
        starts at ``new_term_done`` (the journal's end per writer: records before it were
        decided in another term), as it does with ``resume`` False (this node ended its
        term on p itself: what it journaled since is no term's). Returns the fence (its ``done`` is where publishing of
        ``p`` resumes), or None if a message with a revision >= ``revision`` is already there
        (this node's lease is older than the term there: it must not fence)."""
        for _ in range(attempts):
            cur = await self.last_message(p)
            if cur is not None and cur.rev >= revision and not (cur.node == self.node and cur.rev == revision):
                self.counters.refused += 1
                self.counters.lost.append((p, revision))
                return None
            done = dict(cur.done) if resume and cur is not None and cur.node == self.node \
                else dict(new_term_done)
            hdr = {H_KIND: "fence", H_REV: str(revision), H_NODE: self.node, H_DONE: encode_done(done)}
            seq = await self._publish(p, b"", hdr, cur.stream_seq if cur else 0)
            if seq is not None:
                self.last[p], self.fenced[p] = seq, revision
                self.counters.fences += 1
                return Message(seq, "fence", revision, self.node, done)
        raise ReplicationError(f"partition={p}: fence refused {attempts} times in a row "
                               f"(another publisher keeps writing)")

    async def publish(self, p: int, revision: int, writer: int, records: np.ndarray, done: dict) -> int | None:
        """Publish ``records`` (one writer's, of partition p, in seq order) in this node's term
        on ``p``: the stream sequence, or None if fencing refused it (the partition is lost:
        counted in ``counters``, ``p`` leaves ``fenced``; never retried)."""
        if p not in self.fenced:
            raise ReplicationError(f"partition={p}: publish without a fence (take the term first)")
        recs = np.ascontiguousarray(records)
        if not len(recs):
            raise ReplicationError(f"partition={p}: nothing to publish")
        hdr = {H_KIND: "rec", H_REV: str(revision), H_NODE: self.node, H_WRITER: str(writer),
               H_FIRST: str(int(recs["seq"][0])), H_LAST: str(int(recs["seq"][-1])),
               H_COUNT: str(len(recs)), H_DONE: encode_done(done)}
        seq = await self._publish(p, recs.tobytes(), hdr, self.last[p])
        if seq is None:
            self.counters.refused += 1
            self.counters.lost.append((p, revision))
            self.fenced.pop(p, None)
            self.last.pop(p, None)
            return None
        self.last[p] = seq
        self.counters.published_msgs += 1
        self.counters.published_records += len(recs)
        return seq

    async def _publish(self, p: int, data: bytes, hdr: dict, expect: int) -> int | None:
        """Publish expecting ``expect`` as the subject's last sequence: the new sequence, or
        None if refused. A lost answer is retried with the same expectation until RETRY_S."""
        subj = subject(self.prefix, p)
        deadline = asyncio.get_running_loop().time() + RETRY_S
        again = False                              # an earlier attempt's answer was lost
        while True:
            try:
                ack = await self.js.publish(subj, data, timeout=self.timeout_s,
                                            headers={**hdr, api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expect)})
                return ack.seq
            except jserr.APIError as e:
                if e.err_code not in WRONG_LAST_SEQ:
                    if e.code != 503 or asyncio.get_running_loop().time() > deadline:
                        raise
                    self.counters.retried += 1     # no leader yet (an election): same expectation
                    await asyncio.sleep(0.2)
                    continue
                # refused: fenced off, unless an earlier attempt of this very message was stored
                return await self._stored_as(p, hdr, expect) if again else None
            except _TRANSIENT:
                if asyncio.get_running_loop().time() > deadline:
                    raise ReplicationError(f"partition={p}: publish unanswered for {RETRY_S:g} s") from None
                self.counters.retried += 1
                again = True
                await asyncio.sleep(0.2)

    async def _stored_as(self, p: int, hdr: dict, expect: int) -> int | None:
        """The stream sequence of the subject's last message if it is the one ``hdr``
        describes, stored after ``expect`` (a retried publish whose first attempt was
        stored), else None."""
        for _ in range(50):
            try:
                m = await self.js.get_msg(self.stream, subject=subject(self.prefix, p))
                break
            except jserr.NotFoundError:
                return None
            except _TRANSIENT:
                await asyncio.sleep(0.2)
        else:
            raise ReplicationError(f"partition={p}: the subject's last message cannot be read")
        h = m.headers or {}
        same = all(h.get(k) == v for k, v in hdr.items())
        return m.seq if same and m.seq > expect else None

    # --- replay ---------------------------------------------------------------------------

    async def replay(self, p: int, after_seq: int = 0, end_seq: int | None = None, since=None):
        """Yield the partition's messages after stream sequence ``after_seq`` (or, given
        ``since``, a UTC datetime, those the stream stored from then on) up to its last
        one when the replay started (or ``end_seq``), in stream order, each checked, and the
        subject's term order with them: revisions never go back, and records carry the node
        and at least the revision of the fence before them. The first failing message raises
        ReplicationCorruptError (nothing is skipped)."""
        if end_seq is None:
            last = await self.last_message(p)
            end_seq = last.stream_seq if last is not None else 0
        if end_seq <= after_seq:
            return
        term, prev_rev, subj = None, 0, subject(self.prefix, p)
        # an ordered consumer (flow-controlled push, gaps re-requested by the client) from the
        # first sequence after after_seq: messages stream in, no request per message
        start = dict(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1) \
            if since is None else dict(deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=since)
        sub = await self.js.subscribe(subj, stream=self.stream, ordered_consumer=True,
                                      config=api.ConsumerConfig(**start, ack_policy=api.AckPolicy.NONE))
        try:
            while True:
                try:
                    m = await sub.next_msg(timeout=REPLAY_WAIT_S)
                except nats.errors.TimeoutError:
                    raise ReplicationError(f"stream={self.stream} subject={subj}: nothing delivered for "
                                           f"{REPLAY_WAIT_S:g} s before seq {end_seq}") from None
                sseq = m.metadata.sequence.stream
                if sseq > end_seq:
                    return
                msg = self.decode(p, sseq, m.headers or {}, m.data or b"")
                self._check_term(p, msg, term, prev_rev)
                term = msg if msg.kind == "fence" else term
                prev_rev = msg.rev
                yield msg
                if sseq >= end_seq:
                    return
        finally:
            await sub.unsubscribe()

    def _check_term(self, p: int, msg: Message, term: Message | None, prev_rev: int) -> None:
        """Term order: revisions never go back; records after a fence are its node's."""
        where = f"stream={self.stream} subject={subject(self.prefix, p)} seq={msg.stream_seq}"
        if msg.rev < prev_rev:
            raise ReplicationCorruptError(f"{where}: revision {msg.rev} after {prev_rev}")
        if msg.kind == "rec" and term is not None and msg.node != term.node:
            raise ReplicationCorruptError(f"{where}: records of node {msg.node} in the term "
                                          f"of {term.node} (fence at seq {term.stream_seq})")
