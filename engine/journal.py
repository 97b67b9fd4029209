"""Append-only event journal writer: one single writer per worker, memory-mapped fixed-size records.

Format (record diagram, check word, segment header): shm.journal_format. Reader:
engine.journal_reader. Both are re-exported here, so ``from engine.journal import ...`` is the
whole API. Durability of each ``fsync`` policy and the snapshot protocol: docs/DURABILITY.md.

The writer owns a series ``w{id:03d}-*.rjl`` in a directory (flock ``w{id:03d}.lock``). Segments
are filled completely before rotating, so segment k+1 starts where k ends. The next segment
is prepared as ``*.rjl.tmp`` (fallocated, its header written and fsynced, then zero-filled)
and published by rename, only once its predecessor is durable. Under fsync=interval_ms and
none the zero pages are not written back on their own: records overwrite them in the page
cache and the syncs cover the records' range only (``sync``, ``sync_appended``), so the disk
takes each journal page once. fsync=batch writes the zero pages back ahead instead
(engine.journal_segments). With a housekeeping thread (``background``) rotation does no disk
I/O on the appending thread: it maps the prepared ``.tmp`` and appends on, and the thread
publishes it (``publish_pending``). Readers and a reopening writer take a sealed ``.tmp``
successor of a complete segment as part of the journal (journal_format.pending_successor), so
a crash before publication loses nothing.
"""
from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np

from shm.runtime.config_types import JournalConfig
from shm.journal_format import (FSYNC_POLICIES, HEADER_SIZE, MAGIC, VERSION,  # noqa: F401
                                RETRY_NS, CorruptRecords, JournalCorruptError, JournalError,
                                JournalGapError, JournalVersionError, SegmentHeader,
                                checksum, journal_dtype, list_segments, list_writers,
                                read_header, segment_name)
from shm.journal_append import (ST_APPENDED, ST_DIRTY_HI, ST_DIRTY_LO, ST_FIRST, ST_POS, ST_WORDS,
                                _append, _append_slots, _append_slots_at, field_mask,
                                records_entry, warm_up)
from engine.journal_reader import JournalReader, TornTail, iter_merged  # noqa: F401
from engine.journal_segments import SegmentSeries, lock_writer, remove_unfinished
from engine.journal_sync import WriterSync
from shm.runtime.securedir import ensure_private_dir

# A full disk or a failing one: the journal is unavailable (JournalWriter.try_reserve says so,
# the worker answers JOURNAL_UNAVAILABLE) until a retry succeeds; any other OSError is a bug
# and raises.
DISK_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO))


# --- writer ----------------------------------------------------------------------------------

def _state(i: int, doc: str) -> property:
    """A JournalWriter attribute kept in word ``i`` of its append state (``_st``)."""
    return property(lambda self: int(self._st[i]), lambda self, v: self._st.__setitem__(i, v), doc=doc)


class JournalWriter(SegmentSeries, WriterSync):
    """The single writer of one worker's journal (OneToMany: no locks; one process appends).

    Opening an existing journal finds the last committed record of the newest segment,
    stepping over corrupt runs (records after them are kept; listed in ``corrupt``), zeroes
    whatever follows it (a torn tail), and continues the sequence from there. ``seq_floor``
    (the newest snapshot's seq for this writer): the sequence never restarts at or below it.
    ``append_batch`` and ``try_append_slots`` are the hot path: one compiled call per batch
    copies it into the mmap, numbers and seals it, and advances the position
    (shm.journal_append); Python runs only to rotate and for fsync=batch. Three parts share
    the state made here: this class (the append path, disk-failure availability, rotation),
    SegmentSeries (engine.journal_segments: the segment files) and WriterSync
    (engine.journal_sync: syncs and housekeeping).
    """

    def __init__(self, directory: str, event_dtype: np.dtype, schema_hash: int,
                 writer_id: int = 0, config: JournalConfig = JournalConfig(), first_seq: int = 1,
                 seq_floor: int = 0):
        self.directory = str(directory)
        self.dtype = journal_dtype(event_dtype)
        self.schema_hash = int(schema_hash)
        self.writer_id = int(writer_id)
        if not 0 <= self.writer_id <= 999:
            raise ValueError(f"writer_id: must be in [0, 999] (3 digits in file names), got {writer_id}")
        self.config = config
        self._sync_each = config.fsync == "batch"
        self._st = np.zeros(ST_WORDS, np.int64)  # position etc.: the kernels advance it
        self._rs = self.dtype.itemsize
        # arrival_ns, client_id, request_id and the event's field bytes (append_slots zeroes
        # the event's padding)
        self._slot_mask = np.concatenate([np.full(3, np.uint64(2**64 - 1)),
                                          field_mask(self.dtype["event"])])
        self._cap = (config.segment_bytes - HEADER_SIZE) // self._rs
        if self._cap < 1:
            raise ValueError(f"journal.segment_bytes: {config.segment_bytes} holds no {self._rs}-byte record")
        self._interval_ns = config.interval_ms * 1_000_000
        self._mm = self._lock_fd = None
        self._retired: list = []               # maps of rotated-away segments, to munmap later
        self._retention_due = False
        self._hk_lock = threading.Lock()       # housekeeping thread vs rotation (see housekeep)
        self._pub_lock = threading.Lock()      # one publisher at a time (publish_pending)
        self._unpublished: tuple | None = None  # (predecessor, final path, NextSegment or None)
        self.background = False                # True: a thread calls housekeep(); rotation then
                                               # leaves unmapping and retention to it
        self._recs = self._words = self._raw = self._staging = None
        self._append_records = None            # append_batch's compiled entry (records_entry)
        self._appended_map, self._appended_synced = None, 0    # sync_appended's progress
        self.snapshot_seq: int | None = None   # retention floor, see set_snapshot_seq
        # counters (read by the worker's stats)
        self.syncs = self.rotations = self.publications = self.segments_deleted = 0
        self.torn_bytes_repaired = 0
        self.seq_floor = int(seq_floor)
        self.corrupt: list[CorruptRecords] = []   # stepped over at open (never rewritten)
        # full disk / I/O errors (try_reserve): errno while unavailable, else 0
        self.unavailable = 0
        self.last_error = ""
        self.write_errors = 0
        self._retry_at_ns = 0
        self._sync_failed = False              # a sync failed: nothing is durable until one works
        self._first = max(int(first_seq), self.seq_floor + 1)
        self._pos = 0
        self._dirty_lo = self._dirty_hi = 0
        self._last_sync_ns = time.monotonic_ns()
        warm_up()
        ensure_private_dir(self.directory, "journal.dir")
        self._next = None                      # the next segment, being zero-filled when idle
        self._lock_fd = lock_writer(self.directory, self.writer_id)
        try:
            segs = list_segments(self.directory, self.writer_id)
            if segs:
                self._open_existing(segs[-1][1])
                self._adopt_pending()
            remove_unfinished(self.directory, self.writer_id)   # a crash mid-preparation
            if not segs:
                try:
                    self._create(self._first)
                except OSError as e:           # a full disk at the first segment: start
                    self._fail(e)              # unavailable (try_reserve retries), not crash
                    self._cap = 0
            elif self.last_seq < self.seq_floor:
                raise JournalError(f"journal {self.directory} writer_id={self.writer_id}: it ends at "
                                   f"seq {self.last_seq} but a snapshot counted seq {self.seq_floor}; "
                                   f"refusing to reuse sequence numbers")
        except BaseException:
            self.close()                       # releases the lock of a failed open
            raise

    # the append state lives in self._st, which the compiled append advances (shm.journal_append)
    _pos = _state(ST_POS, "rows of the current segment appended")
    _first = _state(ST_FIRST, "seq of the current segment's first row")
    _dirty_lo = _state(ST_DIRTY_LO, "rows [_dirty_lo, _dirty_hi) were appended since the last sync")
    _dirty_hi = _state(ST_DIRTY_HI, "see _dirty_lo")
    records_appended = property(lambda self: int(self._st[ST_APPENDED]), doc="records appended since open")

    # -- public ---------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._first + self._pos

    @property
    def last_seq(self) -> int:
        """Sequence number of the last appended record (first_seq - 1 when empty)."""
        return self._first + self._pos - 1

    def empty_batch(self, n: int) -> np.ndarray:
        """A zeroed record array of this journal's dtype, for the caller to fill."""
        return np.zeros(n, self.dtype)

    def append_batch(self, records: np.ndarray) -> tuple[int, int]:
        """Append records (journal dtype; seq and check are overwritten). Returns (first, last) seq.

        With fsync=batch the records are on stable storage when this returns.
        """
        if records.ndim != 1 or records.dtype is not self.dtype and records.dtype != self.dtype:
            raise TypeError(f"records: must be a 1-d array of the journal dtype, got "
                            f"ndim={records.ndim} dtype={records.dtype}")
        n = len(records)            # (no local reference to the map: rotation closes it)
        if self._words is not None and not self._sync_each and records.flags.c_contiguous:
            if self._append_records is None:        # the types the entry point takes, checked above
                self._append_records = records_entry(self._words, self._st, self.dtype)
            first = self._append_records(self._words, self._st, records, n)  # 0: rotate first
            if first > 0:                                                # -1: not aligned
                return first, first + n - 1
        try:      # raw words, padding bytes included (half the cost of .view for a record dtype)
            src = np.frombuffer(records, np.uint64)
        except ValueError:                                   # not contiguous
            src = np.frombuffer(np.ascontiguousarray(records), np.uint64)
        return self._append_or_raise(n, _append, (src,))

    def append_slots(self, req_words: np.ndarray, req_w: int, resp_words: np.ndarray,
                     n: int) -> tuple[int, int]:
        """Append ``n`` records straight from a worker's ring slots, without the staging copy
        of ``append_columns`` (3.7-6.2 us a batch, ``python -m bench.worker_step``): ``req_words`` the request slots as flat u64
        words (``req_w`` per slot: token, arrival_ns, client_id, request_id, event), ``resp_words`` the response
        slots as 2-d u64 rows (token, score, generation, action, flags ...). The record is built
        from the slots' descriptors (journal_format.journal_layout), so they line up. Returns
        (first, last) seq."""
        return self._append_or_raise(n, _append_slots, (req_words, req_w, self._slot_mask, resp_words))

    def try_append_slots(self, req_words: np.ndarray, req_w: int, resp_words: np.ndarray,
                         n: int) -> int:
        """``append_slots`` for the worker: returns how many of the ``n`` rows were journaled
        (with fsync=batch: made durable); fewer than n only when the disk failed (full, I/O
        error: ``unavailable`` is then set and counted), never raising for that. Call
        ``try_reserve(n)`` first, so that a rotation finds its successor allocated."""
        if self._words is not None and not self._sync_each and _append_slots_at(
                self._words, self._st, req_words, req_w, self._slot_mask, resp_words, n):
            return n                                         # (0: does not fit, rotate first)
        return self._append_rows(n, _append_slots, (req_words, req_w, self._slot_mask, resp_words))

    def try_reserve(self, n: int) -> bool:
        """Whether ``n`` records can be journaled now: they fit in the current segment, or its
        successor is allocated (``posix_fallocate`` reserved its blocks: the rotation then needs
        no new space, and nothing can fail as SIGBUS in the mapping). False while the journal
        is unavailable (a full disk, an I/O error); the allocation is retried at most every
        RETRY_NS, and the first success makes it available again. One comparison when the
        records fit: the worker calls it before evaluating each batch."""
        if self._pos + n <= self._cap and not self._sync_failed:
            return True
        return self._try_ready(n)

    def _try_ready(self, n: int) -> bool:
        now = time.monotonic_ns()
        if self.unavailable and now < self._retry_at_ns:
            return False
        try:
            if self._sync_failed:
                self.sync()
                self._sync_failed = False
            if self._mm is None:                    # no segment yet (a full disk at open)
                self._create(self._first)
            elif self._pos + n > self._cap:
                with self._hk_lock:
                    nxt = self._first + self._cap
                    if self._next is None or self._next.first != nxt:
                        self._drop_next()
                        self._open_next(nxt)
        except OSError as e:
            self._fail(e)
            return False
        self.unavailable = 0
        return True

    def _fail(self, e: OSError) -> None:
        """Note a disk failure (unavailable until a retry works); other errors raise."""
        if e.errno not in DISK_ERRNOS:
            raise e
        self.unavailable = e.errno
        self.last_error = str(e)
        self.write_errors += 1
        self._retry_at_ns = time.monotonic_ns() + RETRY_NS

    def note_error(self, e: OSError, sync: bool) -> None:
        """From the housekeeping thread: a disk failure there. ``sync``: a sync of appended
        records failed, so nothing more is journaled until one succeeds. Other errors are
        the thread's to report."""
        if e.errno in DISK_ERRNOS:
            self._fail(e)
            self._sync_failed = self._sync_failed or sync

    def _append_or_raise(self, n: int, kernel, args: tuple) -> tuple[int, int]:
        """``_append_rows`` for the library API: (first, last) seq, or OSError on a disk failure."""
        first = self.next_seq
        if self._append_rows(n, kernel, args) < n:
            raise OSError(self.unavailable, f"journal {self.directory} writer_id={self.writer_id}: "
                                            f"{self.last_error}")
        return first, first + n - 1

    def _append_rows(self, n: int, kernel, args: tuple) -> int:
        """The append's slow path (rotation, fsync=batch, no segment): ``kernel(words, pos,
        *args, first_row, k, first_seq)`` copies and seals rows first_row.. into rows pos..
        of the current segment; rotations between the pieces.
        Returns the rows journaled: fewer than n after a disk failure (rotation, fsync=batch
        sync), which ``_fail`` notes."""
        done = 0
        while done < n:
            try:
                if self._mm is None:            # no segment yet (a full disk at open)
                    self._create(self._first)
                elif self._pos == self._cap:
                    self._rotate()
            except OSError as e:
                self._fail(e)
                break
            k = min(n - done, self._cap - self._pos)
            p = self._pos
            kernel(self._words, p, *args, done, k, self._first + p)   # one copy + seal pass
            self._mark_dirty(p, p + k)
            self._pos = p + k
            if self._sync_each:
                try:
                    self.sync()
                except OSError as e:           # appended, not durable: not journaled as far
                    self._fail(e)              # as the caller's reply is concerned
                    self._sync_failed = True
                    break
            done += k
            self._st[ST_APPENDED] += k
        return done

    def append_columns(self, event: np.ndarray, arrival_ns, action, flags, score,
                       generation, client_id=0, request_id=0) -> tuple[int, int]:
        """Append a batch given as columns (events of the schema dtype; the others arrays of
        the same length or scalars), through a reused staging buffer. Returns (first, last) seq."""
        n = len(event)
        if self._staging is None or len(self._staging) < n:
            self._staging = np.zeros(max(n, 64), self.dtype)
        st = self._staging[:n]
        st["event"] = event
        st["arrival_ns"] = arrival_ns
        st["action"] = action
        st["flags"] = flags
        st["score"] = score
        st["generation"] = generation
        st["client_id"] = client_id
        st["request_id"] = request_id
        return self.append_batch(st)

    def set_snapshot_seq(self, seq: int) -> None:
        """Retention floor: never delete a segment holding a record with seq >= ``seq``.

        Pass the journal seq of the OLDEST snapshot kept, so that recovery can fall back to it.
        Until this is called, retention applies max_files / max_age_s alone.
        """
        self.snapshot_seq = int(seq)

    def close(self) -> None:
        if self._mm is not None:
            self.publish_pending()
            if self.config.fsync != "none":
                self.sync()
            self._recs = self._words = self._raw = None
            self._mm.close()
            self._mm = None
        self._drop_next()
        self._unmap_retired()
        if self._lock_fd is not None:
            os.close(self._lock_fd)             # releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _rotate(self) -> None:
        nxt = self.next_seq
        if self.background:
            # No disk wait here: the msync of the old segment's tail took up to 350 ms under
            # a batched run's writeback (the worker stalled, its requests timed out). Switch
            # to the prepared successor, still named .tmp; the housekeeping thread makes the
            # old segment durable, then publishes the new one (publish_pending).
            self.publish_pending()             # the previous one, if the thread is behind
            with self._hk_lock:
                n = self._take_next(nxt)           # first: a full disk leaves all as it was
                before = self._path
                self._recs = self._words = self._raw = None
                self._retired.append(self._mm)     # munmap of a dirty 64 MiB map took ~10 ms
                self._mm = None                    # here: housekeep does it, not the append
                self._map(n.path + ".tmp", nxt, 0)
                self._unpublished = (before, n.path, n)
                self._retention_due = True         # unlinking old segments: housekeep too
            self.rotations += 1
            return
        if self.config.fsync != "none":       # the old segment is durable before the new exists
            self.sync()
        self._unmap_retired()                  # the one before (on_idle may not have)
        with self._hk_lock:
            path = self._take_next(nxt).path       # first: a full disk leaves all as it was
            self._recs = self._words = self._raw = None
            self._retired.append(self._mm)
            self._mm = None
            self._publish_and_map(path, nxt)
        self.rotations += 1
        self._apply_retention()

