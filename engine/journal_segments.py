"""The segment files of one journal writer's series, apart from the records in them.

The writer's lock (``w{id:03d}.lock``), the next segment's file (created as ``*.rjl.tmp``,
fallocated, its header written, then zero-filled: ``NextSegment``), its publication by
rename, retention of old segments, and ``sync_tail`` for another process. ``SegmentSeries``
is the writer's part that uses them: it maps segments, opens the newest at start and
prepares the next. Names, headers and listing: shm.journal_format; the writer that appends:
engine.journal.
"""
from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import time
from dataclasses import dataclass

import numpy as np

from shm.journal_format import (HEADER_SIZE, SUFFIX, CorruptRecords, JournalError, SegmentHeader,
                                _unlink, fsync_dir, fsync_path, list_segments, now_ns,
                                pending_successor, read_header, segment_name, walk_segment)
from shm.runtime.config_types import JournalConfig

# The zero-fill writes one page per call: larger writes make large page-cache folios, and every
# record stored after an fsync would re-dirty (and rewrite) a whole folio (docs/DURABILITY.md, 1).
# Zero pages are written back ahead of the records only under fsync=batch, whose per-batch msync
# would otherwise convert unwritten extents on the reply path.
_ZERO_PAGE = memoryview(bytes(mmap.PAGESIZE))
_ZERO_CHUNK = 1 << 20                        # bytes zero-filled per loop round
_SYNC_FILE_RANGE_WRITE = 2
try:
    _sync_file_range = ctypes.CDLL(None, use_errno=True).sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
except (OSError, AttributeError):
    _sync_file_range = None


def zero_fill(fd: int, lo: int, hi: int) -> None:
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
class NextSegment:
    fd: int
    path: str            # final name; the file is path + ".tmp" until published
    first: int
    cap: int
    size: int
    filled: int = HEADER_SIZE   # bytes written: the header at creation, then the zero-fill
    durable: bool = False  # the header and the allocation fsynced (or fsync=none): from then
                           # on only records need a sync, never the whole file
    sealed: bool = False   # zero-filled to the end: ready to append into

    @classmethod
    def create(cls, directory: str, writer_id: int, schema_hash: int, record_size: int,
               first: int, segment_bytes: int, durable: bool) -> "NextSegment":
        """Create the segment's ``.tmp`` with its header (a reader takes it for the sealed
        successor of a complete segment from now on: its records, none yet, are all it holds).
        posix_fallocate reserves the space: a full disk fails here, never as SIGBUS in the
        mmap. ``durable``: nothing to fsync (fsync=none)."""
        cap = (segment_bytes - HEADER_SIZE) // record_size
        path = os.path.join(directory, segment_name(writer_id, first))
        fd = os.open(path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, HEADER_SIZE + cap * record_size)
            os.pwrite(fd, SegmentHeader(path, schema_hash, record_size, writer_id, first,
                                        now_ns(), cap).pack(), 0)
        except OSError:
            os.close(fd)
            _unlink(path + ".tmp")
            raise
        return cls(fd, path, first, cap, HEADER_SIZE + cap * record_size, durable=durable)

    def fill(self, budget_bytes: int, writeback: bool) -> bool:
        """Zero-fill at most budget_bytes more; True when complete. Real zero writes: pages of
        a fallocated-only file fault at first touch with ext4 extent conversion (8-10 ms p99
        per 136 KiB batch measured here); written pages do not. They stay in the page cache,
        dirty, until records overwrite them; ``writeback`` (fsync=batch) starts their
        writeback at once (module comment)."""
        while self.filled < self.size and budget_bytes > 0:
            lo = self.filled
            hi = min(self.size, lo + budget_bytes, lo + _ZERO_CHUNK)
            zero_fill(self.fd, lo, hi)
            if writeback and _sync_file_range is not None:
                _sync_file_range(self.fd, lo, hi - lo, _SYNC_FILE_RANGE_WRITE)
            self.filled = hi
            budget_bytes -= hi - lo
        self.sealed = self.filled >= self.size
        return self.sealed

    def drop(self) -> None:
        """Close and remove the unpublished file."""
        os.close(self.fd)
        _unlink(self.path + ".tmp")


def lock_writer(directory: str, writer_id: int) -> int:
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


def remove_unfinished(directory: str, writer_id: int) -> None:
    """At open, after adopting a sealed successor: remove ``.tmp`` files a crash left
    mid-preparation."""
    prefix = f"w{writer_id:03d}-"
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(SUFFIX + ".tmp"):
            _unlink(os.path.join(directory, name))


def publish(path: str, directory: str, fsync: bool) -> None:
    """Rename ``path + '.tmp'`` to ``path``; with ``fsync``, make the rename durable."""
    os.rename(path + ".tmp", path)
    if fsync:
        fsync_dir(directory)


def apply_retention(directory: str, writer_id: int, config: JournalConfig,
                    snapshot_seq: int | None, next_first: int) -> int:
    """Delete the oldest published segments beyond max_files / older than max_age_s, never the
    active one nor one holding a record with seq >= snapshot_seq. ``next_first``: the first
    seq of the active segment. Returns how many it deleted."""
    c = config
    if not (c.max_files or c.max_age_s):
        return 0
    segs = list_segments(directory, writer_id)[:-1]   # never the active one
    keep = len(segs) + 1
    deleted = 0
    cutoff = time.time() - c.max_age_s
    for i, (first, path) in enumerate(segs):
        last = segs[i + 1][0] - 1 if i + 1 < len(segs) else next_first - 1
        if snapshot_seq is not None and last >= snapshot_seq:
            break
        too_many = c.max_files and keep > c.max_files
        too_old = c.max_age_s and os.path.getmtime(path) < cutoff
        if not (too_many or too_old):
            break
        os.unlink(path)
        keep -= 1
        deleted += 1
    return deleted


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


class SegmentSeries:
    """JournalWriter's part that handles its segment files: mapping a segment, opening the
    newest at start (stepping over corrupt runs, zeroing a torn tail, adopting a sealed
    successor), preparing the next one, publishing it, retention. The state it uses is
    created in JournalWriter.__init__ (the writer's class docstring lists the three parts)."""

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

    def _open_next(self, first: int) -> NextSegment:
        """Create the next segment (NextSegment.create); not yet fsynced (``durable``) unless
        fsync=none."""
        n = self._next = NextSegment.create(self.directory, self.writer_id, self.schema_hash, self._rs,
                                            first, self.config.segment_bytes,
                                            durable=self.config.fsync == "none")
        return n

    def _prepare(self, budget_bytes: int, first: int, sync: bool = True) -> bool:
        """Zero-fill the next segment's file (creating it first), at most budget_bytes now;
        True when complete (NextSegment.fill). ``sync``: fsync the header before
        zero-filling, unless done already (the file holds nothing else dirty then); False
        leaves that to the caller, or to publication."""
        n = self._next or self._open_next(first)
        if sync and not n.durable:
            os.fsync(n.fd)
            n.durable = True
        return n.fill(budget_bytes, writeback=self.config.fsync == "batch")

    def _take_next(self, first: int) -> NextSegment:
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
        publish(path, self.directory, fsync=self.config.fsync != "none")
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
            self._next.drop()
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

    def _apply_retention(self) -> None:
        self.segments_deleted += apply_retention(self.directory, self.writer_id, self.config,
                                                 self.snapshot_seq, self._first)
