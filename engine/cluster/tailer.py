"""The journal tailer: follows this node's journal writers and publishes the committed records
of the partitions it owns to the replication stream (engine.cluster.replog), in journal order
per writer. This is ``cluster.ack: async``: the reply went out when the record was journaled;
the records not yet published are the loss window, exposed as ``lag()``.

Per partition it keeps ``done[p]`` (writer -> seq): every record of p from that writer up to
that seq is published, or belongs to another term. Taking a partition (it appears in the
OwnershipTable) publishes a fence first (ReplicationLog.fence): if the subject's last message
is this node's, the term continues from its Rj-Done and the tailer rewinds its writers to it,
so the records it had not published before a restart follow with no duplicate and no gap;
otherwise the new term starts at the journal's end, since the records before it were decided
before this node held the lease (the serve integration fences before it serves). A record is
published iff its partition is fenced by this node and its seq is past ``done[p]``, so
re-reading after a rewind never publishes twice. A lapsed lease does not end publishing: the
term's records were decided while the lease was valid and are published until a new owner's
fence refuses them, which narrows the loss window to what was unpublished at that fence. A
partition refused by fencing is lost: the tailer stops publishing it until the table shows
it owned at a revision newer than the refused term's fence. A partition whose lease this node
released or lost (``end_term``, the lease agent's hook) is published up to the journal's end
at that moment and then dropped; taking it again starts a new term at the journal's end.

With ``marks`` (shm.replication, the node's ``replication`` segment) each step records, per
writer, the records it read as resolved, and the highest of them not in the stream (not
published: no fence of ours on its partition, past its ended term, or refused) as failed: a
worker under ``cluster.ack: sync`` answers a decision only once its record is resolved, and
never as a decision if it may have failed (engine.ackgate). A step that raises (NATS
unreachable) resolves nothing: the records wait in the journal and their replies are held.

Its readers follow live writers (``JournalReader(scan_rows=SCAN_ROWS)``): at a writer's end
they look SCAN_ROWS rows ahead for committed records that would make the invalid ones before
them corruption (raised, as by any read), not the rest of the segment; a longer zeroed run
stops the tailer before it (nothing past it is published or resolved) and is reported by any
full read (recovery, replay).
"""
from __future__ import annotations

import asyncio

import numpy as np

from engine.cluster.ownership import OwnershipTable
from engine.cluster.replog import ReplicationLog
from engine.journal_reader import JournalReader
from shm.journal_format import list_writers
from shm.replication import ReplicationMarks
from shm.schema import take_rows

SCAN_ROWS = 1024             # rows past a writer's end each read checks for a committed record
                             # (a zeroed run ending before it is corruption: JournalReader); a
                             # full read of the segment's zeros took 18-45 ms per idle writer


async def _all(coros) -> list:
    """Run the coroutines concurrently; every one ends before this returns, also when one
    raises (then the first error is raised): one left running would race the next step's
    publishes on its partition, each expecting the other's sequence."""
    res = await asyncio.gather(*coros, return_exceptions=True)
    for r in res:
        if isinstance(r, BaseException):
            raise r
    return res


class JournalTailer:
    def __init__(self, log: ReplicationLog, journal_dir: str, event_dtype: np.dtype, schema_hash: int,
                 table: OwnershipTable, batch_records: int = 4096, records_per_msg: int = 1024,
                 marks: ReplicationMarks | None = None):
        self.log, self.dir, self.table, self.marks = log, str(journal_dir), table, marks
        self.event_dtype, self.schema_hash = np.dtype(event_dtype), int(schema_hash)
        self.batch_records, self.records_per_msg = batch_records, records_per_msg
        self.cursor: dict[int, int] = {}       # writer -> last seq read (published or not ours)
        self.done: dict[int, dict[int, int]] = {}   # p -> writer -> seq handled (module doc)
        self.readers: dict[int, JournalReader] = {}
        self.refused: dict[int, int] = {}      # p -> the revision fencing refused (not retried)
        self.rev: dict[int, int] = {}          # p -> the newest revision of our term on p
        self.read_last_step = 0                # records read by the last step (0: at the end)
        self.cutoff: dict[int, dict[int, int]] = {}   # p -> writer -> last seq of the ended term
        self.ended: set[int] = set()           # p whose term this node ended (end_term)

    def _reader(self, w: int) -> JournalReader:
        if w not in self.readers:
            self.readers[w] = JournalReader(self.dir, self.event_dtype, self.schema_hash, w,
                                            scan_rows=SCAN_ROWS)
        return self.readers[w]

    def journal_end(self) -> dict[int, int]:
        """writer -> seq of its newest committed record."""
        return {w: self._reader(w).last_committed_seq() for w in list_writers(self.dir)}

    def lag(self) -> dict[int, int]:
        """writer -> committed records the tailer has not read yet (the async loss window,
        plus records of partitions it does not own, which it will skip)."""
        return {w: end - self.cursor.get(w, end) for w, end in self.journal_end().items()}

    async def take_ownership(self, owned: dict[int, int] | None = None) -> None:
        """Fence the partitions the table says this node owns (or ``owned``: {p: revision},
        a partition being taken before the table shows it: engine.cluster.takeover) and that
        it has not fenced. A partition whose lease lapsed stays fenced: its records were
        decided in the term and are still published, until a new owner's fence refuses them."""
        owned = self.table.owned() if owned is None else owned
        # a revision once refused is not tried again: a lost lease comes back only with a
        # newer revision (the agent's renewals of a taken-over lease are refused too)
        for p in owned:                        # taken again before its ended term drained:
            self.cutoff.pop(p, None)           # the term goes on
        new = [(p, rev) for p, rev in sorted(owned.items())
               if p not in self.log.fenced and rev > self.refused.get(p, 0)]
        if not new:
            return
        end = self.journal_end()
        for w, e in end.items():               # a writer first seen now: its records so far
            self.cursor.setdefault(w, e)       # were decided before any term of ours
        fences = await _all([self.log.fence(p, rev, end, resume=p not in self.ended) for p, rev in new])
        for (p, rev), f in zip(new, fences):
            if f is None:
                self.refused[p] = rev
                continue
            self.done[p] = dict(f.done)
            self.rev[p] = rev
            self.ended.discard(p)
            for w, s in f.done.items():        # a continued term: re-read what it left unpublished
                if w in self.cursor:
                    self.cursor[w] = min(self.cursor[w], s)

    async def fence(self, p: int, revision: int) -> int | None:
        """Fence partition ``p`` at ``revision`` now: the stream sequence of this term's fence
        (of its last message when this node's term on p goes on), None if fencing refused it."""
        await self.take_ownership({p: revision})
        return self.log.last.get(p) if p in self.log.fenced else None

    def end_term(self, p: int) -> None:
        """This node released or lost p's lease: publish p's records journaled until now (its
        term's), none after; once they are out, p is dropped (``ended``)."""
        if p in self.log.fenced:
            self.cutoff[p] = self.journal_end()

    def _drop_ended(self) -> None:
        for p, cut in list(self.cutoff.items()):
            if all(self.cursor.get(w, 0) >= s for w, s in cut.items()):
                del self.cutoff[p]
                self.log.fenced.pop(p, None)
                self.log.last.pop(p, None)
                self.done.pop(p, None)
                self.ended.add(p)

    async def step(self) -> int:
        """Take new partitions, then read up to ``batch_records`` new records per writer and
        publish those of owned, fenced partitions (one partition's messages in order,
        partitions concurrently). Returns the number of records published."""
        await self.take_ownership()
        published = self.read_last_step = 0
        for w in list_writers(self.dir):
            if w not in self.cursor:           # unknown to our fences: created after them (all
                self.cursor[w] = 0 if self.log.fenced else self._reader(w).last_committed_seq()
                                               # of it ours) or we own nothing (none of it)
            it = self._reader(w).iter_batches(self.cursor[w] + 1, self.batch_records)
            recs = next(it, None)
            it.close()
            if recs is None or not len(recs):
                continue
            n, failed = await self._publish_batch(w, recs)
            published += n
            self.cursor[w] = int(recs["seq"][-1])
            if self.marks is not None:
                self.marks.advance(w, self.cursor[w], failed)
            self.read_last_step += len(recs)
        self._drop_ended()
        return published

    async def _publish_batch(self, w: int, recs: np.ndarray) -> tuple[int, int]:
        """Publish ``recs`` (writer w): (records published, the highest seq among them that is
        not in the stream, 0 if none)."""
        parts = self.log.partition_of(recs)
        seqs = recs["seq"].astype(np.int64)
        jobs, sent, failed = [], [], 0
        for p in np.unique(parts).tolist():
            if p not in self.log.fenced:
                failed = max(failed, int(seqs[parts == p].max()))
                continue
            # a renewal's revision while the lease is valid, the last one after it lapsed
            rev = self.rev[p] = max(self.table.owns(p), self.rev[p])
            ours = parts == p
            mine = ours & (seqs > self.done[p].get(w, 0))
            if (ours & ~mine).any():           # before the term's fence or re-read after a
                failed = max(failed, int(seqs[ours & ~mine].max()))   # rewind: not ours to vouch for
            if p in self.cutoff:               # an ended term: nothing journaled after it
                late = mine & (seqs > self.cutoff[p].get(w, 0))
                if late.any():
                    failed = max(failed, int(seqs[late].max()))
                mine &= ~late
            sel = take_rows(recs, mine)
            if len(sel):
                jobs.append(self._publish_partition(p, rev, w, sel))
                sent.append(sel)
        counts = await _all(jobs)
        for sel, n in zip(sent, counts):
            if n < len(sel):                   # refused from record n on
                failed = max(failed, int(sel["seq"][-1]))
        return sum(counts), failed

    async def _publish_partition(self, p: int, rev: int, w: int, sel: np.ndarray) -> int:
        n, term = 0, self.log.fenced[p]
        for i in range(0, len(sel), self.records_per_msg):
            part = sel[i:i + self.records_per_msg]
            done = {**self.done[p], w: int(part["seq"][-1])}
            if await self.log.publish(p, rev, w, part, done) is None:
                self.done.pop(p, None)         # fenced off: lost until a newer take than
                self.refused[p] = term         # the term's fence (not a stale renewal's)
                return n
            self.done[p] = done
            n += len(part)
        return n

    async def drain(self, max_steps: int = 10_000) -> int:
        """Step until a step finds no new record in any writer (bounded); records published."""
        total = 0
        for _ in range(max_steps):
            total += await self.step()
            if not self.read_last_step:
                break
        return total
