"""Journal reader: one writer's records in sequence order as numpy batches, every record validated.

A committed record has a matching check word and the next expected seq (shm.journal_format).
An invalid record that committed records follow in its segment is corruption: it raises
``JournalCorruptError`` naming file, offset and seq (nothing after it is dropped), or, with
``skip_corrupt``, is stepped over and listed in ``JournalReader.corrupt``. Otherwise the first
record that is not committed ends the journal: zeros from there to the end of the file mean a
clean end; anything else is a torn tail (reported in ``JournalReader.torn``, ignored) in the
newest segment, and ``JournalCorruptError`` (file, offset) in an older one.
A sealed successor not yet published (``*.rjl.tmp``, shm.journal_format.pending_successor)
is read after the newest segment when that one is complete, and ignored otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from shm.journal_format import (HEADER_SIZE, CorruptRecords, JournalCorruptError, JournalGapError,
                                SegmentHeader, _count_valid, journal_dtype, list_segments,
                                list_writers, pending_successor, read_header, resume_after,
                                VERSION)

SKIP_HINT = ("recovery stopped and nothing was discarded; restore the file from a copy, or "
             "restart with --skip-corrupt-journal-records (journal.skip_corrupt_records: true) "
             "to skip exactly the corrupt record(s) and keep every later one")


@dataclass(frozen=True)
class TornTail:
    """Where the last segment stops being valid; the records from there on are ignored."""
    path: str
    offset: int      # byte offset in the file of the first invalid record
    seq: int         # the sequence number expected there
    reason: str


class JournalReader:
    """Reads one writer's journal in sequence order as numpy batches, validating every record.

    Any process may read, also while the writer appends (a record being written looks like a
    torn tail until it is sealed). After ``iter_batches`` is exhausted, ``last_seq`` is the
    seq of the last committed record read (from_seq - 1 if none was) and ``torn`` describes
    an ignored tail (or is None). Batches are fresh arrays (not views of a reused buffer) and
    never span two segments.

    ``skip_corrupt``: step over corrupt runs (listed in ``corrupt``, a list the caller may
    pass to share) instead of raising; the records after them are read. ``floor_seq``: a
    record with seq <= floor_seq is known to have been written (a snapshot counted it), so an
    invalid one there is corruption even with nothing valid after it. ``scan_rows``: how far
    past an invalid record of the newest segment a follower of a live writer (the cluster's
    journal tailer) looks for the committed records that make it corruption rather than the
    journal's end (None: to the segment's end, 16 MiB by default, which a follower reading
    every few ms cannot afford: engine.cluster.tailer).
    """

    def __init__(self, directory: str, event_dtype: np.dtype, schema_hash: int, writer_id: int = 0,
                 *, skip_corrupt: bool = False, floor_seq: int = 0, corrupt: list | None = None,
                 version: int = VERSION, scan_rows: int | None = None):
        self.directory = str(directory)
        self.scan_rows = scan_rows
        self.version = version                  # 1: the previous format (engine.journal_upgrade)
        self.dtype = journal_dtype(event_dtype, version)
        self.schema_hash = int(schema_hash)
        self.writer_id = int(writer_id)
        self.skip_corrupt = skip_corrupt
        self.floor_seq = int(floor_seq)
        self.corrupt: list[CorruptRecords] = [] if corrupt is None else corrupt
        self.last_seq = 0
        self.torn: TornTail | None = None

    def segments(self) -> list[SegmentHeader]:
        out = []
        for first, path in list_segments(self.directory, self.writer_id):
            h = read_header(path, self.schema_hash, self.dtype.itemsize, self.writer_id, self.version)
            if h.first_seq != first:
                raise JournalCorruptError(f"journal segment {path}: offset=0 header first_seq={h.first_seq} "
                                          f"differs from the file name")
            out.append(h)
        return out

    def _with_pending(self) -> tuple[list[SegmentHeader], int]:
        """The published segments plus a pending successor of the newest, if any; and the
        index of the newest published one (a torn tail there ends the journal)."""
        segs = self.segments()
        for _ in range(8):                      # a writer's thread may publish meanwhile:
            nxt = pending_successor(segs[-1]) if segs else None
            again = self.segments()             # then the successor is in the new listing
            if [h.first_seq for h in again[-1:]] == [h.first_seq for h in segs[-1:]]:
                break
            segs = again
        return (segs + [nxt] if nxt is not None else segs), len(segs) - 1

    def last_committed_seq(self) -> int:
        """Seq of the newest committed record (0 if none), validating the newest segment only:
        the total for a replay progress bar, or a status line. Sets ``torn`` like a read."""
        segs = self.segments()
        if not segs:
            return 0
        for _ in self.iter_batches(from_seq=segs[-1].first_seq):
            pass
        return self.last_seq

    def read_all(self, from_seq: int | None = None) -> np.ndarray:
        """All committed records from from_seq, as one array (np.concatenate would drop padding)."""
        parts = list(self.iter_batches(from_seq))
        out = np.empty(sum(len(p) for p in parts), self.dtype)
        raw = out.view(np.uint8)
        pos = 0
        for p in parts:                         # byte copies: field assignment skips padding
            raw[pos:pos + p.nbytes] = p.view(np.uint8)
            pos += p.nbytes
        return out

    def iter_batches(self, from_seq: int | None = None, batch_records: int = 65536):
        """Yield committed records with seq >= from_seq (default: the oldest retained) in order.

        Raises JournalGapError if from_seq precedes the retained journal, JournalCorruptError
        (with file and offset) for an invalid record or a gap before the last segment.
        """
        segs, last = self._with_pending()
        self.torn = None
        start = segs[0].first_seq if segs and from_seq is None else int(from_seq or 1)
        self.last_seq = start - 1
        if not segs:
            return
        if start < segs[0].first_seq:
            raise JournalGapError(f"journal {self.directory} writer={self.writer_id}: seq {start} "
                                  f"asked but the retained journal starts at {segs[0].first_seq}")
        k = max(i for i, h in enumerate(segs) if h.first_seq <= start)
        if k > last and not self._ends_complete(segs[last]):
            segs, k = segs[:last + 1], last    # start is past a predecessor with a hole
        expect = start
        rs, w = self.dtype.itemsize, self.dtype.itemsize // 8
        for i in range(k, len(segs)):
            h = segs[i]
            if i > max(k, last) and h.first_seq != expect:
                break                           # a successor of an incomplete segment: not ours
            if i > k and h.first_seq != expect:
                raise JournalCorruptError(f"journal segment {h.path}: offset=0 first_seq={h.first_seq} but "
                                          f"{segs[i - 1].path} ends at seq {expect - 1}")
            idx = expect - h.first_seq
            if idx > h.capacity:
                raise JournalGapError(f"journal segment {h.path}: seq {expect} is past its capacity {h.capacity}")
            bad = None
            with _open_segment(h.path, pending=i > last) as f:
                while idx < h.capacity:
                    m = min(batch_records, h.capacity - idx)
                    buf = np.empty(m * rs, np.uint8)
                    f.seek(HEADER_SIZE + idx * rs)
                    f.readinto(memoryview(buf))
                    words = buf.view(np.uint64).reshape(m, w)
                    n = int(_count_valid(words, np.uint64(expect)))
                    if n:
                        yield buf.view(self.dtype)[:n]
                        expect += n
                        idx += n
                    if n == m:
                        continue
                    end = h.capacity if self.scan_rows is None or i < last else \
                        min(h.capacity, idx + self.scan_rows)    # the rows looked at past it
                    bad = self._classify(h, f.fileno(), idx, words[n], expect, end)
                    run = self._corrupt_run(h, f.fileno(), idx, expect, bad, i < last, end)
                    if run is None:
                        break
                    if not self.skip_corrupt:
                        raise JournalCorruptError(f"{run}; {SKIP_HINT}")
                    self.corrupt.append(run)
                    bad = None
                    expect += run.count
                    idx += run.count
            if bad is not None:
                if i >= last:
                    self.torn = bad
                    break
                raise JournalCorruptError(f"journal segment {bad.path}: offset={bad.offset} {bad.reason} "
                                          f"(not the last segment: the journal after it cannot be trusted)")
        self.last_seq = expect - 1

    def _ends_complete(self, h: SegmentHeader) -> bool:
        """Whether every record of segment ``h`` is committed. Reading from inside its pending
        successor skips it, so it is checked here (a full read checks every record on its
        way): one read of the segment, only on that rare path (a restarted worker's journal
        tail, a snapshot taken just after a rotation)."""
        rs = self.dtype.itemsize
        with open(h.path, "rb") as f:
            f.seek(HEADER_SIZE)
            buf = np.empty(h.capacity * rs, np.uint8)
            if f.readinto(memoryview(buf)) < len(buf):
                return False
        words = buf.view(np.uint64).reshape(h.capacity, rs // 8)
        if self.skip_corrupt:                 # corrupt runs stepped over: its last record
            return int(_count_valid(words[-1:], np.uint64(h.first_seq + h.capacity - 1))) == 1
        return int(_count_valid(words, np.uint64(h.first_seq))) == h.capacity

    def _corrupt_run(self, h: SegmentHeader, fd: int, idx: int, expect: int, bad: TornTail | None,
                     older: bool, end: int | None = None) -> CorruptRecords | None:
        """The invalid records from row ``idx`` on, if they are corruption rather than the
        journal's end (``bad``: the tail ``_classify`` found, None for zeros to the end): a
        committed record follows them in the segment, or their seq is <= floor_seq, or (with
        skip_corrupt) the rest of an older segment, whose successor continues the journal.
        Rows from ``end`` on are not looked at (``scan_rows``)."""
        if bad is None:
            return None                       # zeros to the end of the file: a clean end
        rs, w = h.record_size, h.record_size // 8
        chunk = max(1, (8 << 20) // rs)
        pos, end = idx, h.capacity if end is None else end
        while pos < end:                      # the rest of the segment, 8 MiB at a time
            m = min(chunk + 1, end - pos)
            words = np.frombuffer(os.pread(fd, m * rs, HEADER_SIZE + pos * rs), np.uint64)
            words = words[:len(words) // w * w].reshape(-1, w)
            r = resume_after(words, 0, expect + pos - idx)
            if r >= 0:
                if self._sealed_now(h, fd, idx, expect):
                    return None               # a live writer's record, sealed meanwhile
                return self._run(h, idx, expect, pos + r - idx, bad)
            if len(words) < m:
                break
            pos += max(1, len(words) - 1)     # the chunk's last row starts the next one
        if expect <= self.floor_seq:
            return self._run(h, idx, expect, min(self.floor_seq - expect + 1, h.capacity - idx), bad)
        if older and self.skip_corrupt:
            return self._run(h, idx, expect, h.capacity - idx, bad)
        return None

    @staticmethod
    def _sealed_now(h: SegmentHeader, fd: int, idx: int, expect: int) -> bool:
        """Re-read record ``idx`` after a later record was seen committed. A writer seals in
        order, so a record it was still writing when first read is committed by now; a
        corrupt one is not. Keeps a reader beside a live writer from calling its record
        being written corruption (it stays a torn tail until sealed)."""
        row = np.frombuffer(os.pread(fd, h.record_size, HEADER_SIZE + idx * h.record_size), np.uint64)
        return len(row) * 8 == h.record_size and \
            int(_count_valid(row.reshape(1, -1), np.uint64(expect))) == 1

    @staticmethod
    def _run(h: SegmentHeader, idx: int, expect: int, count: int, bad: TornTail | None) -> CorruptRecords:
        why = bad.reason if bad is not None else "zero record"
        return CorruptRecords(h.path, HEADER_SIZE + idx * h.record_size, expect, count,
                              f"{why}, {count} record(s) invalid and records after them intact: "
                              f"corruption, not a torn tail")

    def _classify(self, h: SegmentHeader, fd: int, idx: int, row: np.ndarray, expect: int, end: int):
        """None if the file is all zeros from record idx up to record ``end`` (clean end),
        else a TornTail."""
        off = HEADER_SIZE + idx * h.record_size
        if row.any():
            why = f"seq={int(row[0])} expected={expect}" if int(row[0]) != expect else "checksum mismatch"
            return TornTail(h.path, off, expect, why)
        end = HEADER_SIZE + end * h.record_size
        pos = off
        while pos < end:
            chunk = np.frombuffer(os.pread(fd, min(8 << 20, end - pos), pos), np.uint8)
            if not len(chunk):
                break
            nz = np.flatnonzero(chunk) if chunk.any() else ()     # any(): no index array
            if len(nz):
                at = pos + int(nz[0])
                return TornTail(h.path, off, expect, f"zero record followed by data at offset={at}")
            pos += len(chunk)
        return None


def _open_segment(path: str, pending: bool):
    """Open a segment for reading; a pending one may have been published (renamed) since it
    was listed: then under its final name."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        if not pending:
            raise
        return open(path[:-len(".tmp")], "rb")


def iter_merged(directory: str, event_dtype: np.dtype, schema_hash: int,
                writers: list[int] | None = None, from_seqs: dict[int, int] | None = None,
                batch_records: int = 65536, *, skip_corrupt: bool = False,
                corrupt: dict[int, list] | None = None):
    """Yield ``(records, writer_ids)`` over several writers' series, interleaved by arrival time.

    Order contract: each writer's records stay in seq order; across writers, records go by the
    running maximum of ``arrival_ns`` within their writer (equal to arrival_ns when a writer's
    arrivals never go back), ties by writer id within an emitted batch. Memory: at most one
    read batch per writer plus what is held back. ``writers`` defaults to every writer in the
    directory; ``from_seqs`` maps writer -> first seq (default: its oldest retained record).
    ``skip_corrupt`` as JournalReader; the runs skipped go to ``corrupt[writer]`` if given.
    """
    writers = list_writers(directory) if writers is None else list(writers)
    from_seqs = from_seqs or {}
    dtype = journal_dtype(event_dtype)
    corrupt = corrupt if corrupt is not None else {}
    its = {w: JournalReader(directory, event_dtype, schema_hash, w, skip_corrupt=skip_corrupt,
                            corrupt=corrupt.setdefault(w, [])).iter_batches(from_seqs.get(w), batch_records)
           for w in writers}
    pend = {w: (np.zeros(0, dtype), np.zeros(0, np.int64)) for w in writers}
    carry = {w: np.iinfo(np.int64).min for w in writers}
    while its or any(len(r) for r, _ in pend.values()):
        for w in list(its):                       # every live writer holds at least one record
            if not len(pend[w][0]):
                b = next(its[w], None)
                if b is None:
                    del its[w]
                    continue
                keys = np.maximum.accumulate(np.maximum(b["arrival_ns"], carry[w]))
                carry[w] = int(keys[-1])
                pend[w] = (b, keys)
        if its:                                   # nothing later from a live writer sorts before this
            mark = min(int(pend[w][1][-1]) for w in its)
            cut = {w: int(np.searchsorted(k, mark, "right")) for w, (_, k) in pend.items()}
        else:
            cut = {w: len(r) for w, (r, _) in pend.items()}
        parts = sorted((w, r[:cut[w]], k[:cut[w]]) for w, (r, k) in pend.items() if cut[w])
        pend = {w: (r[cut[w]:], k[cut[w]:]) for w, (r, k) in pend.items()}
        if not parts:
            continue
        n = sum(len(r) for _, r, _ in parts)
        recs = np.empty(n, dtype)
        raw = recs.view(np.uint8)
        keys = np.empty(n, np.int64)
        wid = np.empty(n, np.int64)
        pos = 0
        for w, r, k in parts:                     # byte copies: structured assignment skips padding
            raw[pos * dtype.itemsize:(pos + len(r)) * dtype.itemsize] = r.view(np.uint8)
            keys[pos:pos + len(r)] = k
            wid[pos:pos + len(r)] = w
            pos += len(r)
        order = np.argsort(keys, kind="stable")   # parts are sorted runs in writer order:
                                                  # timsort merges them; ties keep writer, seq
        out = np.empty(n, dtype)                  # reorder rows as bytes: recs[order] copies
        out.view(np.uint8).reshape(n, dtype.itemsize)[:] = \
            raw.reshape(n, dtype.itemsize)[order]  # field by field and leaves padding garbage
        yield out, wid[order]
