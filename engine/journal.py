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
takes each journal page once. fsync=batch writes the zero pages back ahead instead (module
comment below). With a housekeeping thread (``background``) rotation does no disk I/O on the appending thread: it maps the prepared
``.tmp`` and appends on, and the thread publishes it (``publish_pending``). Readers and a
reopening writer take a sealed ``.tmp`` successor of a complete segment as part of the
journal (journal_format.pending_successor), so a crash before publication loses nothing.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from shm.runtime.config_types import JournalConfig
from shm.journal_format import (FSYNC_POLICIES, HEADER_SIZE, MAGIC, SUFFIX, VERSION,  # noqa: F401
                                RETRY_NS, CorruptRecords, JournalCorruptError, JournalError,
                                JournalGapError, JournalVersionError, SegmentHeader, _append, _append_slots, _unlink,
                                checksum, field_mask, fsync_dir, fsync_path, journal_dtype,
                                list_segments, list_writers, now_ns, pending_successor, read_header,
                                segment_name, walk_segment, warm_up)
from engine.journal_reader import JournalReader, TornTail, iter_merged  # noqa: F401
from shm.runtime.securedir import ensure_private_dir

# The zero-fill writes one page per call: larger writes make large page-cache folios, and every
# record stored after an fsync would re-dirty (and rewrite) a whole folio (docs/DURABILITY.md, 1).
# Zero pages are written back ahead of the records only under fsync=batch, whose per-batch msync
# would otherwise convert unwritten extents on the reply path.
# A full disk or a failing one: the journal is unavailable (JournalWriter.try_reserve says so,
# the worker answers JOURNAL_UNAVAILABLE) until a retry succeeds; any other OSError is a bug
# and raises.
DISK_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO))
_ZERO_PAGE = memoryview(bytes(mmap.PAGESIZE))
_ZERO_CHUNK = 1 << 20                        # bytes zero-filled per loop round
_SYNC_FILE_RANGE_WRITE = 2
_MS_SYNC = 4
try:
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
except (OSError, AttributeError):
    _sync_file_range = None
try:
    # through ctypes, which releases the GIL (mmap.flush holds it): the housekeeping thread's
    # interval sync must not stop the worker's main thread while the disk writes
    _msync = ctypes.CDLL(None, use_errno=True).msync
    _msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):
    _msync = None
_MADV_POPULATE_WRITE = 23                     # Linux >= 5.14
try:
    # through ctypes, which releases the GIL: a populate that waits on the file system (ext4's
    # page_mkwrite under a journal commit) must not hold up the worker's main thread
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):
    _madvise = None


def _zero_fill(fd: int, lo: int, hi: int) -> None:
    """Write zeros over bytes [lo, hi) of a file, never across a page boundary (_ZERO_PAGE).
    The loop is the housekeeping thread's only Python per page: it holds the GIL between two
    writes, and a thread preempted while holding it stalls the worker's main thread."""
    page = len(_ZERO_PAGE)
    a = min(hi, -(-lo // page) * page)            # lo up to its page boundary
    b = max(a, hi // page * page)                 # whole pages [a, b), then the rest
    for off, k in ((lo, a - lo), (b, hi - b)):
        if k and os.pwrite(fd, _ZERO_PAGE[:k], off) != k:
            raise OSError(f"journal zero-fill: short write at {off}")
    pwrite = os.pwrite
    for off in range(a, b, page):
        if pwrite(fd, _ZERO_PAGE, off) != page:
            raise OSError(f"journal zero-fill: short write at {off}")


@dataclass
class _NextSegment:
    fd: int
    path: str            # final name; the file is path + ".tmp" until published
    first: int
    cap: int
    size: int
    filled: int = HEADER_SIZE   # bytes written: the header at creation, then the zero-fill
    durable: bool = False  # the header and the allocation fsynced (or fsync=none): from then
                           # on only records need a sync, never the whole file
    sealed: bool = False   # zero-filled to the end: ready to append into


def _lock_writer(directory: str, writer_id: int) -> int:
    """Exclusive flock on w{id}.lock: one live writer per series (the kernel drops it on death)."""
    path = os.path.join(directory, f"w{writer_id:03d}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal {directory}: writer_id={writer_id} is already open by another "
                           f"writer (lock file {path})") from None
    return fd


def sync_tail(directory: str, writer_id: int, schema_hash: int, record_size: int) -> None:
    """From any process: fsync the newest records of one writer's series (its unpublished
    successor, then its two newest segments) and the directory. Safe while the writer's
    thread publishes: a successor renamed meanwhile is in the second listing, or is synced
    under its final name."""
    segs = list_segments(directory, writer_id)
    nxt = pending_successor(read_header(segs[-1][1], schema_hash, record_size, writer_id)) if segs else None
    if nxt is not None:
        try:
            fsync_path(nxt.path)
        except FileNotFoundError:
            fsync_path(nxt.path[:-len(".tmp")])
    for _, path in list_segments(directory, writer_id)[-2:]:
        fsync_path(path)
    fsync_dir(directory)


# --- writer ----------------------------------------------------------------------------------

class JournalWriter:
    """The single writer of one worker's journal (OneToMany: no locks; one process appends).

    Opening an existing journal finds the last committed record of the newest segment,
    stepping over corrupt runs (records after them are kept; listed in ``corrupt``), zeroes
    whatever follows it (a torn tail), and continues the sequence from there. ``seq_floor``
    (the newest snapshot's seq for this writer): the sequence never restarts at or below it.
    ``append_batch`` is the hot path: one copy of the batch into the mmap and one njit pass
    that numbers and checksums it.
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
        self._unpublished: tuple | None = None  # (predecessor, final path, _NextSegment or None)
        self.background = False                # True: a thread calls housekeep(); rotation then
                                               # leaves unmapping and retention to it
        self._recs = self._words = self._raw = self._staging = None
        self._appended_map, self._appended_synced = None, 0    # sync_appended's progress
        self.snapshot_seq: int | None = None   # retention floor, see set_snapshot_seq
        # counters (read by the worker's stats)
        self.syncs = self.rotations = self.publications = self.segments_deleted = 0
        self.torn_bytes_repaired = 0
        self.records_appended = 0
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
        self._lock_fd = _lock_writer(self.directory, self.writer_id)
        try:
            segs = list_segments(self.directory, self.writer_id)
            if segs:
                self._open_existing(segs[-1][1])
                self._adopt_pending()
            prefix = f"w{self.writer_id:03d}-"
            for name in os.listdir(self.directory):
                if name.startswith(prefix) and name.endswith(SUFFIX + ".tmp"):
                    _unlink(os.path.join(self.directory, name))   # a crash mid-preparation
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
        if records.dtype != self.dtype or records.ndim != 1:
            raise TypeError(f"records: must be a 1-d array of the journal dtype, got "
                            f"ndim={records.ndim} dtype={records.dtype}")
        try:
            src = records.view(np.uint64)                    # raw words: padding bytes included
        except ValueError:
            src = np.ascontiguousarray(records).view(np.uint64)
        return self._append_or_raise(len(records), _append, (src,))

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
        """``kernel(words, pos, *args, first_row, k, first_seq)`` copies and seals rows
        first_row.. into rows pos.. of the current segment; rotations between the pieces.
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
            if self.config.fsync == "batch":
                try:
                    self.sync()
                except OSError as e:           # appended, not durable: not journaled as far
                    self._fail(e)              # as the caller's reply is concerned
                    self._sync_failed = True
                    break
            done += k
        self.records_appended += done
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

    def on_idle(self, now_monotonic_ns: int | None = None, budget_bytes: int = 256 << 10,
                prefault_bytes: int = 1 << 20, sync: bool = True) -> bool:
        """Idle-path hook for a writer without a housekeeping thread: ``maybe_sync``, then
        ``housekeep`` (page faults, rotation's file work and unmapping leave the append
        path). Returns True if it did any work. ``sync=False`` when another thread fsyncs."""
        did = self.maybe_sync(now_monotonic_ns) if sync else False
        return self.housekeep(budget_bytes, prefault_bytes) or did

    def housekeep(self, budget_bytes: int = 256 << 10, prefault_bytes: int = 1 << 20) -> bool:
        """The journal's file-system work apart from appending: pre-fault the pages of the
        next ``prefault_bytes`` of the segment; zero-fill up to ``budget_bytes`` of the next
        segment (from the moment this one opens, so that rotation, on the appending thread,
        finds it done); unmap rotated segments; apply retention. Safe to
        call from a second thread while another appends (engine.worker.JournalHousekeeper):
        every step either touches no byte the appender writes (the prefault is
        MADV_POPULATE_WRITE, which changes no content) or holds the lock that rotation
        takes. Returns True if it did any work."""
        did = self._unmap_retired()
        with self._hk_lock:
            retention, self._retention_due = self._retention_due, False
        if retention:
            self._apply_retention()
            did = True
        if prefault_bytes and self._prefault(prefault_bytes):
            did = True
        n = self._next
        if n is None or not n.sealed:
            fd = -1
            with self._hk_lock:
                if self._mm is not None:          # (closed meanwhile: nothing to prepare)
                    n = self._next or self._open_next(self._first + self._cap)
                    if n.durable:
                        self._prepare(budget_bytes, n.first, sync=False)
                    else:                         # the header's fsync first, while no zero
                        fd = os.dup(n.fd)         # page is dirty (rotation may close n.fd)
            if fd >= 0:
                try:                              # outside the lock that rotation takes: an
                    os.fsync(fd)                  # fsync waited seconds under disk pressure,
                finally:                          # and so did the worker, for the lock
                    os.close(fd)
                n.durable = True                  # (publish_pending reads it if rotated since)
            did = True
        return did

    def sync_appended(self) -> bool:
        """From the housekeeping thread (fsync=interval_ms): make the records appended to the
        current segment since its last call durable, with an msync(MS_SYNC) of their byte
        range. Not fsync: the zero-filled pages past the records are dirty, and an fsync
        would write them now and again once records fill them. The map stays valid during
        the call: a rotation retires it and only this thread unmaps retired maps. The
        predecessor's last records are synced at publication (publish_pending). True if it
        synced."""
        with self._hk_lock:
            mm, addr, pos = self._mm, self._raw_addr, self._pos
            if mm is None:
                return False
            if self._appended_map is not mm:      # a new segment: from its first record
                self._appended_map, self._appended_synced = mm, 0
            done = self._appended_synced
        if pos <= done:
            return False
        page = mmap.PAGESIZE                  # from 0 the first time: the header's page too,
        lo = (HEADER_SIZE + done * self._rs) // page * page if done else 0   # if not durable
        hi = HEADER_SIZE + pos * self._rs
        if _msync is None:
            mm.flush(lo, hi - lo)
        elif _msync(addr + lo, hi - lo, _MS_SYNC) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"journal {self._path}: msync: {os.strerror(e)}")
        with self._hk_lock:
            if self._appended_map is mm:
                self._appended_synced = max(self._appended_synced, pos)
        return True

    def maybe_sync(self, now_monotonic_ns: int | None = None) -> bool:
        """Idle-path hook for fsync=interval_ms: msync if dirty and the interval passed."""
        if self._dirty_hi <= self._dirty_lo or self.config.fsync != "interval_ms":
            return False
        t = time.monotonic_ns() if now_monotonic_ns is None else now_monotonic_ns
        if t - self._last_sync_ns < self._interval_ns:
            return False
        self.sync(t)
        return True

    def sync(self, now_monotonic_ns: int | None = None) -> None:
        """msync the records written since the last sync (any policy); call before a snapshot."""
        if self._dirty_hi > self._dirty_lo:
            lo = (HEADER_SIZE + self._dirty_lo * self._rs) // mmap.PAGESIZE * mmap.PAGESIZE
            hi = HEADER_SIZE + self._dirty_hi * self._rs
            self._mm.flush(lo, hi - lo)
            self.syncs += 1
        self._dirty_lo = self._dirty_hi = self._pos
        self._last_sync_ns = time.monotonic_ns() if now_monotonic_ns is None else now_monotonic_ns

    def set_snapshot_seq(self, seq: int) -> None:
        """Retention floor: never delete a segment holding a record with seq >= ``seq``.

        Pass the journal seq of the OLDEST snapshot kept, so that recovery can fall back to it.
        Until this is called, retention applies max_files / max_age_s alone.
        """
        self.snapshot_seq = int(seq)

    def publish_pending(self) -> bool:
        """Publish the segment a background rotation switched to: make its predecessor and its
        own header durable (fsync, unless fsync=none), rename the ``.tmp`` to its final name,
        fsync the directory.
        A segment is thus never published before its predecessor is durable, so a hole cannot
        span published segments. Called every round by the housekeeping thread, by the next
        rotation if the thread is behind, and by close. True if it published one."""
        with self._pub_lock:
            with self._hk_lock:
                job = self._unpublished
            if job is None:
                return False
            before, path, nxt = job
            if self.config.fsync != "none":
                fsync_path(before)
                if nxt is None or not nxt.durable:   # its header too: a rotation may have
                    fsync_path(path + ".tmp")        # left that fsync to this thread
            os.rename(path + ".tmp", path)
            if self.config.fsync != "none":
                fsync_dir(self.directory)
            with self._hk_lock:
                self._unpublished = None
                if self._path == path + ".tmp":
                    self._path = path
            self.publications += 1
            return True

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

    # -- segments -------------------------------------------------------------------------
    def _prefault(self, ahead_bytes: int) -> bool:
        """Fault in, writable, each page from the append position to ahead_bytes beyond it.

        The first store to a clean page of a shared file mapping faults, and ext4's fault
        handler (page_mkwrite) updates the file time through its own journal, which waits
        for a running commit under disk load: ms-scale (once 478 ms) stalls inside
        append_batch here. MADV_POPULATE_WRITE takes those faults without changing a byte,
        so it is safe beside the appender; where it is missing, a zero is stored into each
        page past the committed records (only without a housekeeping thread, i.e. when the
        appender itself calls on_idle)."""
        with self._hk_lock:
            mm, raw, addr, pos = self._mm, self._raw, self._raw_addr, self._pos
            done = self._prefaulted
        if mm is None or raw is None:
            return False
        page = mmap.PAGESIZE
        end = HEADER_SIZE + pos * self._rs                # first byte past committed data
        if done - end >= ahead_bytes // 2:                # enough ahead: refill by halves
            return False
        lo = max(done, end)
        hi = min(len(raw), end + ahead_bytes)
        if lo >= hi:
            return False
        start = lo // page * page
        if _madvise is None or _madvise(addr + start, hi - start, _MADV_POPULATE_WRITE) != 0:
            if self.background:                       # called by the housekeeping thread:
                return False                          # stores are only safe from the appender
            raw[lo] = 0                               # never below `end`: committed bytes
            nxt = (lo // page + 1) * page
            if nxt < hi:
                raw[nxt:hi:page] = 0
        with self._hk_lock:
            if self._mm is mm:                        # not rotated away meanwhile
                self._prefaulted = max(self._prefaulted, hi)
        return True

    def _mark_dirty(self, lo: int, hi: int) -> None:
        if self._dirty_hi <= self._dirty_lo:
            self._dirty_lo = lo
        self._dirty_hi = hi

    def _map(self, path: str, first: int, pos: int) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, HEADER_SIZE + self._cap * self._rs)
        finally:
            os.close(fd)
        self._recs = np.frombuffer(self._mm, self.dtype, self._cap, HEADER_SIZE)
        self._words = self._recs.view(np.uint64).reshape(self._cap, self._rs // 8)
        self._raw = np.frombuffer(self._mm, np.uint8)
        # the address once per map: ndarray.ctypes builds a reference cycle on every access,
        # garbage the collector meets rarely in a loop that allocates almost nothing (it showed
        # as a block per 4,000 events in the worker's risk_python_blocks, bench.alloc)
        self._raw_addr = self._raw.ctypes.data
        self._prefaulted = 0                    # byte offset up to which pages were pre-faulted
        self._path, self._first, self._pos = path, first, pos
        self._dirty_lo = self._dirty_hi = pos
        self._last_sync_ns = time.monotonic_ns()

    def _open_next(self, first: int) -> _NextSegment:
        """Create the next segment's ``.tmp`` with its header (a reader takes it for the
        sealed successor of a complete segment from now on: its records, none yet, are all it
        holds). posix_fallocate reserves the space: a full disk fails here, never as SIGBUS
        in the mmap. Not yet fsynced (``durable``) unless fsync=none."""
        cap = (self.config.segment_bytes - HEADER_SIZE) // self._rs
        path = os.path.join(self.directory, segment_name(self.writer_id, first))
        fd = os.open(path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, HEADER_SIZE + cap * self._rs)
            os.pwrite(fd, SegmentHeader(path, self.schema_hash, self._rs, self.writer_id, first,
                                        now_ns(), cap).pack(), 0)
        except OSError:
            os.close(fd)
            _unlink(path + ".tmp")
            raise
        n = self._next = _NextSegment(fd, path, first, cap, HEADER_SIZE + cap * self._rs,
                                      durable=self.config.fsync == "none")
        return n

    def _prepare(self, budget_bytes: int, first: int, sync: bool = True) -> bool:
        """Zero-fill the next segment's file (creating it first), at most budget_bytes now;
        True when complete. Real zero writes: pages of a fallocated-only file fault at first
        touch with ext4 extent conversion (8-10 ms p99 per 136 KiB batch measured here);
        written pages do not. They stay in the page cache, dirty, until records overwrite
        them (fsync=batch: their writeback starts at once, module comment). ``sync``: fsync
        the header before zero-filling, unless done already (the file
        holds nothing else dirty then); False leaves that to the caller, or to publication.
        """
        n = self._next or self._open_next(first)
        if sync and not n.durable:
            os.fsync(n.fd)
            n.durable = True
        while n.filled < n.size and budget_bytes > 0:
            lo = n.filled
            hi = min(n.size, lo + budget_bytes, lo + _ZERO_CHUNK)
            _zero_fill(n.fd, lo, hi)
            if self.config.fsync == "batch" and _sync_file_range is not None:
                _sync_file_range(n.fd, lo, hi - lo, _SYNC_FILE_RANGE_WRITE)
            n.filled = hi
            budget_bytes -= hi - lo
        n.sealed = n.filled >= n.size
        return n.sealed

    def _take_next(self, first: int) -> _NextSegment:
        """Finish the prepared next segment (or make one now) and hand it over (its fd
        closed): the file is still ``n.path + '.tmp'``."""
        if self._next is not None and self._next.first != first:
            self._drop_next()
        try:
            # zero-fills what is not yet. On the appending thread of a writer with a
            # housekeeping thread and fsync=interval_ms (or none), without the header's fsync
            # if the thread has not done it: under disk pressure that fsync held the worker for
            # 0.1-1 s (a batched run's TIMEOUT bursts, docs/DURABILITY.md). Publication, or the
            # thread's first sync of the segment, takes the header with it. fsync=batch keeps
            # it: an acknowledged record needs its segment's header on disk.
            self._prepare(1 << 62, first, sync=not (self.background and self.config.fsync != "batch"))
        except BaseException:
            self._drop_next()
            raise
        n, self._next = self._next, None
        self._cap = n.cap
        os.close(n.fd)
        return n

    def _create(self, first: int) -> None:
        """Finish the next segment, publish it by rename, map it."""
        self._publish_and_map(self._take_next(first).path, first)

    def _publish_and_map(self, path: str, first: int) -> None:
        os.rename(path + ".tmp", path)
        if self.config.fsync != "none":
            fsync_dir(self.directory)
        self._map(path, first, 0)

    def _adopt_pending(self) -> None:
        """At open: a complete newest segment with a sealed successor (a background rotation
        the process did not live to publish) continues in that successor, published now."""
        if self._pos < self._cap:
            return
        nxt = pending_successor(read_header(self._path, self.schema_hash, self._rs, self.writer_id))
        if nxt is None:
            return
        path = nxt.path[:-len(".tmp")]
        self._unpublished = (self._path, path, None)   # its header's fsync: not known
        self.publish_pending()
        self._recs = self._words = self._raw = None
        self._mm.close()
        self._mm = None
        self._open_existing(path)

    def _drop_next(self) -> None:
        if self._next is not None:
            os.close(self._next.fd)
            _unlink(self._next.path + ".tmp")
            self._next = None

    def _open_existing(self, path: str) -> None:
        hdr = read_header(path, self.schema_hash, self._rs, self.writer_id)
        self._cap = hdr.capacity              # segment_bytes may have changed: finish this one as is
        self._map(path, hdr.first_seq, 0)
        # never cut the journal at a corrupt record that later records outlive, nor below the
        # floor: the next kill -9 would then replay past reused sequence numbers
        n, runs = walk_segment(self._words, hdr.first_seq, self.seq_floor)
        self.corrupt += [CorruptRecords(path, HEADER_SIZE + r * self._rs, hdr.first_seq + r, k,
                                        "invalid record(s) stepped over at open (kept as found)")
                         for r, k in runs]
        tail = self._recs[n:].view(np.uint8)
        nz = np.flatnonzero(tail)
        if len(nz):                            # torn tail: zero it so no stale record revives
            tail[nz[0]:nz[-1] + 1] = 0
            self.torn_bytes_repaired = int(nz[-1] + 1 - nz[0])
            self._mm.flush(0, len(self._mm))
        self._pos = self._dirty_lo = self._dirty_hi = n

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

    def _unmap_retired(self) -> bool:
        """munmap the maps of rotated-away segments (taken under the lock, closed outside it);
        True if there were any."""
        with self._hk_lock:
            retired, self._retired = self._retired, []
        for mm in retired:
            mm.close()
        return bool(retired)

    def _apply_retention(self) -> None:
        c = self.config
        if not (c.max_files or c.max_age_s):
            return
        segs = list_segments(self.directory, self.writer_id)[:-1]   # never the active one
        keep = len(segs) + 1
        cutoff = time.time() - c.max_age_s
        for i, (first, path) in enumerate(segs):
            last = segs[i + 1][0] - 1 if i + 1 < len(segs) else self._first - 1
            if self.snapshot_seq is not None and last >= self.snapshot_seq:
                break
            too_many = c.max_files and keep > c.max_files
            too_old = c.max_age_s and os.path.getmtime(path) < cutoff
            if not (too_many or too_old):
                break
            os.unlink(path)
            keep -= 1
            self.segments_deleted += 1
