"""Append-only event journal: one single writer per worker, memory-mapped fixed-size records.

Directory layout: ``w{writer:03d}-{first_seq:020d}.rjl`` segment files, one series per writer,
ordered by first sequence number. Each segment is preallocated (``posix_fallocate``, so a full
disk fails at rotation, not as SIGBUS inside the mmap), created under a temporary name and
renamed once its header is written::

    segment file
    +---------------------------+ 0
    | header (struct, 4096 B)   |  magic, version, header_size, schema_hash, record_size,
    |                           |  writer_id, first_seq, created_ns, capacity, header_crc32
    +---------------------------+ 4096  (page aligned: msync ranges need no rounding here)
    | record 0 (seq first_seq)  |
    | record 1                  |  capacity = (segment_bytes - 4096) // record_size
    | ...                       |
    +---------------------------+

    record (journal_dtype(event_dtype), every field 8-byte aligned)
    +-----+------------+-----------+-------+------------+--------+-------+-----+-------+
    | seq | arrival_ns | event ... | score | generation | action | flags | pad | check |
    | u64 | i64        | schema    | f64   | u32        | u8     | u8    | u16 | u64   |
    +-----+------------+-----------+-------+------------+--------+-------+-----+-------+

``check`` is the per-record checksum and the commit marker: a 64-bit multiply-xorshift hash of
every other word of the record, with its low bit forced to 1 so that never-written (zero) space
never validates. A record is committed iff ``check`` matches and ``seq`` is the next expected
number; sequence numbers start at 1 and are gap-free per writer. The first invalid record
ends the journal: zeros after it mean a clean end, anything else is a torn tail (reported,
ignored) in the last segment and corruption (``JournalCorruptError``) in an earlier one.

Durability of each ``fsync`` policy: see docs/DURABILITY.md.
"""
from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
from numba import njit

MAGIC = b"RJOURNL\x00"
VERSION = 1
HEADER_SIZE = 4096
_HEADER = struct.Struct("<8sIIQIIQqQ")         # followed by crc32 of these bytes (u32)
SUFFIX = ".rjl"
FSYNC_POLICIES = ("none", "interval_ms", "batch")

_K0 = np.uint64(0x9E3779B97F4A7C15)
_K1 = np.uint64(0xBF58476D1CE4E5B9)
_K2 = np.uint64(0x94D049BB133111EB)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_ONE = np.uint64(1)


class JournalError(RuntimeError):
    """Base class of journal errors; messages name the file and the byte offset."""


class JournalCorruptError(JournalError):
    """A record or header that is neither valid nor a tail: the journal cannot be trusted."""


class JournalGapError(JournalError):
    """The asked sequence number is not in the retained journal."""


def journal_dtype(event_dtype: np.dtype) -> np.dtype:
    """The journal record dtype for an event dtype (see the module diagram)."""
    ev = np.dtype(event_dtype)
    if ev.itemsize % 8:
        raise ValueError(f"event_dtype: itemsize must be a multiple of 8, got {ev.itemsize}")
    o = 16 + ev.itemsize
    return np.dtype({
        "names": ["seq", "arrival_ns", "event", "score", "generation", "action", "flags", "check"],
        "formats": [np.uint64, np.int64, ev, np.float64, np.uint32, np.uint8, np.uint8, np.uint64],
        "offsets": [0, 8, 16, o, o + 8, o + 12, o + 13, o + 16],
        "itemsize": o + 24})


# --- kernels: records seen as rows of u64 words; seq is word 0, check the last word ----------

@njit(cache=True, inline="always")
def _record_hash(row):
    n = row.shape[0] - 1
    h = _K0 * np.uint64(n + 1)
    for k in range(n):
        h ^= row[k]
        h *= _K1
        h ^= h >> _S32
    h ^= h >> _S27
    h *= _K2
    h ^= h >> _S31
    return h | _ONE


@njit(cache=True)
def _append(words, pos, src, first_row, n, first_seq):
    """Copy src rows first_row.. (flat u64 words) into rows pos.., numbering them first_seq..
    and storing their checks. seq is stored before the hash is taken: the hash covers it."""
    w = words.shape[1]
    for i in range(n):
        r = pos + i
        base = (first_row + i) * w
        for k in range(w - 1):
            words[r, k] = src[base + k]
        words[r, 0] = np.uint64(first_seq + i)
        words[r, w - 1] = _record_hash(words[r])


@njit(cache=True)
def _count_valid(words, expect_seq):
    """Length of the prefix of rows numbered expect_seq.. whose checks match."""
    w = words.shape[1] - 1
    for i in range(words.shape[0]):
        if words[i, 0] != expect_seq + np.uint64(i) or words[i, w] != _record_hash(words[i]):
            return i
    return words.shape[0]


def warm_up() -> None:
    """Compile (or load from the numba cache) every kernel signature; the writer calls it."""
    w = np.zeros((1, 2), np.uint64)
    _append(w, 0, w.reshape(-1), 0, 1, 1)
    _count_valid(w, np.uint64(1))


def checksum(records: np.ndarray) -> np.ndarray:
    """Check words of journal records as stored (u64 per record); for tests and tools."""
    words = np.ascontiguousarray(records).view(np.uint64).reshape(len(records), -1)
    out = np.empty(len(records), np.uint64)
    for i in range(len(records)):
        out[i] = _record_hash(words[i])
    return out


# --- segment header --------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentHeader:
    path: str
    schema_hash: int
    record_size: int
    writer_id: int
    first_seq: int
    created_ns: int
    capacity: int        # records

    def pack(self) -> bytes:
        body = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, self.schema_hash, self.record_size,
                            self.writer_id, self.first_seq, self.created_ns, self.capacity)
        return body + struct.pack("<I", zlib.crc32(body))


def read_header(path: str, schema_hash: int, record_size: int, writer_id: int) -> SegmentHeader:
    """Read and validate a segment header; raise JournalCorruptError naming file and field."""
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size + 4)
        size = os.fstat(f.fileno()).st_size
    if len(raw) < _HEADER.size + 4:
        raise JournalCorruptError(f"journal segment {path}: offset=0 header truncated ({len(raw)} bytes)")
    magic, ver, hsize, shash, rsize, wid, first, created, cap = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise JournalCorruptError(f"journal segment {path}: offset=0 bad magic {magic!r}")
    if struct.unpack_from("<I", raw, _HEADER.size)[0] != zlib.crc32(raw[:_HEADER.size]):
        raise JournalCorruptError(f"journal segment {path}: offset=0 header checksum mismatch")
    if ver != VERSION or hsize != HEADER_SIZE:
        raise JournalCorruptError(f"journal segment {path}: version={ver} header_size={hsize} not supported")
    if shash != schema_hash:
        raise JournalCorruptError(f"journal segment {path}: schema_hash=0x{shash:016x} but the "
                                  f"engine's schema is 0x{schema_hash:016x}")
    if rsize != record_size or wid != writer_id:
        raise JournalCorruptError(f"journal segment {path}: record_size={rsize} writer_id={wid}, "
                                  f"expected record_size={record_size} writer_id={writer_id}")
    if size < HEADER_SIZE + cap * rsize:
        raise JournalCorruptError(f"journal segment {path}: file size {size} < header + capacity={cap} records")
    return SegmentHeader(path, shash, rsize, wid, first, created, cap)


def segment_name(writer_id: int, first_seq: int) -> str:
    return f"w{writer_id:03d}-{first_seq:020d}{SUFFIX}"


def list_segments(directory: str, writer_id: int) -> list[tuple[int, str]]:
    """(first_seq, path) of one writer's segments, oldest first (from the file names)."""
    prefix = f"w{writer_id:03d}-"
    out = []
    if not os.path.isdir(directory):
        return out
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(SUFFIX):
            digits = name[len(prefix):-len(SUFFIX)]
            if digits.isdigit():
                out.append((int(digits), os.path.join(directory, name)))
    return sorted(out)


_ZEROS = memoryview(bytes(1 << 20))
_SYNC_FILE_RANGE_WRITE = 2
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _sync_file_range = _libc.sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
except (OSError, AttributeError):            # not Linux/glibc: the fsync does all the work
    _sync_file_range = None


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start (not wait for) writeback of a byte range: sync_file_range(SYNC_FILE_RANGE_WRITE).

    Zero-filling a 64 MiB segment without it left the fsync at publication 37 ms of work here,
    with it 2-9 ms."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


@dataclass
class _NextSegment:
    fd: int
    path: str            # final name; the file is path + ".tmp" until published
    first: int
    cap: int
    size: int
    filled: int = 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _lock_writer(directory: str, writer_id: int) -> int:
    """Exclusive flock on w{id}.lock: one live writer per series (the kernel drops it on death)."""
    path = os.path.join(directory, f"w{writer_id:03d}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalError(f"journal {directory}: writer_id={writer_id} is already open by another "
                           f"writer (lock file {path})") from None
    return fd


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_ns() -> int:
    return time.time_ns()


# --- writer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JournalConfig:
    """Journal settings. ``fsync``: none | interval_ms | batch (loss windows: DURABILITY.md)."""
    segment_bytes: int = 64 << 20
    fsync: str = "interval_ms"
    interval_ms: int = 10
    max_files: int = 0          # 0: unlimited; else keep at most this many segments per writer
    max_age_s: int = 0          # 0: unlimited; else delete segments not written for this long

    def __post_init__(self):
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"journal.fsync: must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        if not (HEADER_SIZE + 64 <= self.segment_bytes <= 1 << 40):
            raise ValueError(f"journal.segment_bytes: must be in [{HEADER_SIZE + 64}, 2**40], got {self.segment_bytes}")
        for k in ("interval_ms", "max_files", "max_age_s"):
            if getattr(self, k) < 0:
                raise ValueError(f"journal.{k}: must be >= 0, got {getattr(self, k)}")


class JournalWriter:
    """The single writer of one worker's journal (OneToMany: no locks; one process appends).

    Opening an existing journal finds the last committed record of the newest segment,
    zeroes whatever follows it (a torn tail), and continues the sequence from there.
    ``append_batch`` is the hot path: one copy of the batch into the mmap and one njit pass
    that numbers and checksums it.
    """

    def __init__(self, directory: str, event_dtype: np.dtype, schema_hash: int,
                 writer_id: int = 0, config: JournalConfig = JournalConfig(), first_seq: int = 1):
        self.directory = str(directory)
        self.dtype = journal_dtype(event_dtype)
        self.schema_hash = int(schema_hash)
        self.writer_id = int(writer_id)
        self.config = config
        self._rs = self.dtype.itemsize
        self._cap = (config.segment_bytes - HEADER_SIZE) // self._rs
        if self._cap < 1:
            raise ValueError(f"journal.segment_bytes: {config.segment_bytes} holds no {self._rs}-byte record")
        self._interval_ns = config.interval_ms * 1_000_000
        self._mm = self._lock_fd = self._retired = None
        self._recs = self._words = self._raw = None
        self.snapshot_seq: int | None = None   # retention floor, see set_snapshot_seq
        # counters (read by the worker's stats)
        self.syncs = self.rotations = self.segments_deleted = self.torn_bytes_repaired = 0
        self.records_appended = 0
        warm_up()
        os.makedirs(self.directory, exist_ok=True)
        self._lock_fd = _lock_writer(self.directory, self.writer_id)
        self._next = None                      # the next segment, being zero-filled when idle
        prefix = f"w{self.writer_id:03d}-"
        for name in os.listdir(self.directory):
            if name.startswith(prefix) and name.endswith(SUFFIX + ".tmp"):
                _unlink(os.path.join(self.directory, name))   # a crash mid-preparation
        segs = list_segments(self.directory, self.writer_id)
        if segs:
            self._open_existing(segs[-1][1])
        else:
            self._create(int(first_seq))

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
        n = len(records)
        try:
            src = records.view(np.uint64)                    # raw words: padding bytes included
        except ValueError:
            src = np.ascontiguousarray(records).view(np.uint64)
        first = self.next_seq
        done = 0
        while done < n:
            if self._pos == self._cap:
                self._rotate()
            k = min(n - done, self._cap - self._pos)
            p = self._pos
            _append(self._words, p, src, done, k, self._first + p)   # one copy + seal pass
            self._mark_dirty(p, p + k)
            self._pos = p + k
            done += k
            if self.config.fsync == "batch":
                self.sync()
        self.records_appended += n
        return first, first + n - 1

    def on_idle(self, now_monotonic_ns: int | None = None, budget_bytes: int = 256 << 10,
                prefault_bytes: int = 1 << 20) -> bool:
        """Idle-path hook: ``maybe_sync``; pre-fault the pages of the next prefault_bytes of the
        segment; once the segment is half full, zero-fill up to budget_bytes of the next one.
        So page faults, rotation and unmapping leave the append path. Returns True if it did
        any work. Call it whenever the worker finds its ring empty."""
        did = self.maybe_sync(now_monotonic_ns)
        if prefault_bytes and self._prefault(prefault_bytes):
            did = True
        if self._retired is not None:
            self._close_retired()
            did = True
        if 2 * self._pos >= self._cap and (self._next is None or self._next.filled < self._next.size):
            self._prepare(budget_bytes, self._first + self._cap)   # segments rotate only when full
            did = True
        return did

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

    def close(self) -> None:
        if self._mm is not None:
            if self.config.fsync != "none":
                self.sync()
            self._recs = self._words = self._raw = None
            self._mm.close()
            self._mm = None
        self._drop_next()
        self._close_retired()
        if self._lock_fd is not None:
            os.close(self._lock_fd)             # releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- segments -------------------------------------------------------------------------
    def _prefault(self, ahead_bytes: int) -> bool:
        """Store a zero into each page from the append position to ahead_bytes beyond it.

        The first store to a clean page of a shared file mapping faults, and ext4's fault
        handler (page_mkwrite) updates the file time through its own journal, which waits
        for a running commit under disk load: ms-scale stalls inside append_batch here. The
        pages past the position hold zeros by invariant, so the stores change nothing."""
        page = mmap.PAGESIZE
        end = HEADER_SIZE + self._pos * self._rs          # first byte past committed data
        lo = max(self._prefaulted, end)
        hi = min(len(self._mm), end + ahead_bytes)
        if lo >= hi:
            return False
        self._raw[lo] = 0                                 # never below `end`: committed bytes
        nxt = (lo // page + 1) * page
        if nxt < hi:
            self._raw[nxt:hi:page] = 0
        self._prefaulted = hi
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
        self._prefaulted = 0                    # byte offset up to which pages were pre-faulted
        self._path, self._first, self._pos = path, first, pos
        self._dirty_lo = self._dirty_hi = pos
        self._last_sync_ns = time.monotonic_ns()

    def _prepare(self, budget_bytes: int, first: int) -> bool:
        """Zero-fill the next segment's file, at most budget_bytes now; True when complete.

        posix_fallocate first (a full disk fails here, never as SIGBUS in the mmap), then real
        zero writes: pages of a fallocated-only file fault at first touch with ext4 extent
        conversion (8-10 ms p99 per 136 KiB batch measured here); written pages do not.
        """
        n = self._next
        if n is None:
            cap = (self.config.segment_bytes - HEADER_SIZE) // self._rs
            path = os.path.join(self.directory, segment_name(self.writer_id, first))
            fd = os.open(path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.posix_fallocate(fd, 0, HEADER_SIZE + cap * self._rs)
            except OSError:
                os.close(fd)
                raise
            n = self._next = _NextSegment(fd, path, first, cap, HEADER_SIZE + cap * self._rs)
        while n.filled < n.size and budget_bytes > 0:
            k = min(len(_ZEROS), n.size - n.filled, budget_bytes)
            w = os.pwrite(n.fd, _ZEROS[:k], n.filled)
            _start_writeback(n.fd, n.filled, w)   # so the fsync at publication finds it clean
            n.filled += w
            budget_bytes -= k
        return n.filled >= n.size

    def _create(self, first: int) -> None:
        """Finish the prepared next segment (or make one now), publish it by rename, map it."""
        if self._next is not None and self._next.first != first:
            self._drop_next()
        self._prepare(1 << 62, first)
        n, self._next = self._next, None
        self._cap = n.cap
        hdr = SegmentHeader(n.path, self.schema_hash, self._rs, self.writer_id, first, now_ns(), n.cap)
        try:
            os.pwrite(n.fd, hdr.pack(), 0)
            if self.config.fsync != "none":
                os.fsync(n.fd)
        finally:
            os.close(n.fd)
        os.rename(n.path + ".tmp", n.path)
        if self.config.fsync != "none":
            fsync_dir(self.directory)
        self._map(n.path, first, 0)

    def _close_retired(self) -> None:
        if self._retired is not None:
            self._retired.close()
            self._retired = None

    def _drop_next(self) -> None:
        if self._next is not None:
            os.close(self._next.fd)
            _unlink(self._next.path + ".tmp")
            self._next = None

    def _open_existing(self, path: str) -> None:
        hdr = read_header(path, self.schema_hash, self._rs, self.writer_id)
        self._cap = hdr.capacity              # segment_bytes may have changed: finish this one as is
        self._map(path, hdr.first_seq, 0)
        n = int(_count_valid(self._words, np.uint64(hdr.first_seq)))
        tail = self._recs[n:].view(np.uint8)
        nz = np.flatnonzero(tail)
        if len(nz):                            # torn tail: zero it so no stale record revives
            tail[nz[0]:nz[-1] + 1] = 0
            self.torn_bytes_repaired = int(nz[-1] + 1 - nz[0])
            self._mm.flush(0, len(self._mm))
        self._pos = self._dirty_lo = self._dirty_hi = n

    def _rotate(self) -> None:
        if self.config.fsync != "none":       # the old segment is durable before the new exists
            self.sync()
        nxt = self.next_seq
        self._recs = self._words = self._raw = None
        self._close_retired()
        self._retired, self._mm = self._mm, None   # munmap of a dirty 64 MiB map took ~10 ms here:
        self._create(nxt)                          # on_idle (or close) does it, not the append
        self.rotations += 1
        self._apply_retention()

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


# --- reader ----------------------------------------------------------------------------------

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
    """

    def __init__(self, directory: str, event_dtype: np.dtype, schema_hash: int, writer_id: int = 0):
        self.directory = str(directory)
        self.dtype = journal_dtype(event_dtype)
        self.schema_hash = int(schema_hash)
        self.writer_id = int(writer_id)
        self.last_seq = 0
        self.torn: TornTail | None = None

    def segments(self) -> list[SegmentHeader]:
        out = []
        for first, path in list_segments(self.directory, self.writer_id):
            h = read_header(path, self.schema_hash, self.dtype.itemsize, self.writer_id)
            if h.first_seq != first:
                raise JournalCorruptError(f"journal segment {path}: offset=0 header first_seq={h.first_seq} "
                                          f"differs from the file name")
            out.append(h)
        return out

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
        segs = self.segments()
        self.torn = None
        start = segs[0].first_seq if segs and from_seq is None else int(from_seq or 1)
        self.last_seq = start - 1
        if not segs:
            return
        if start < segs[0].first_seq:
            raise JournalGapError(f"journal {self.directory} writer={self.writer_id}: seq {start} "
                                  f"asked but the retained journal starts at {segs[0].first_seq}")
        k = max(i for i, h in enumerate(segs) if h.first_seq <= start)
        expect = start
        rs, w = self.dtype.itemsize, self.dtype.itemsize // 8
        for i in range(k, len(segs)):
            h = segs[i]
            if i > k and h.first_seq != expect:
                raise JournalCorruptError(f"journal segment {h.path}: offset=0 first_seq={h.first_seq} but "
                                          f"{segs[i - 1].path} ends at seq {expect - 1}")
            idx = expect - h.first_seq
            if idx > h.capacity:
                raise JournalGapError(f"journal segment {h.path}: seq {expect} is past its capacity {h.capacity}")
            bad = None
            with open(h.path, "rb") as f:
                f.seek(HEADER_SIZE + idx * rs)
                while idx < h.capacity:
                    m = min(batch_records, h.capacity - idx)
                    buf = np.empty(m * rs, np.uint8)
                    f.readinto(memoryview(buf))
                    words = buf.view(np.uint64).reshape(m, w)
                    n = int(_count_valid(words, np.uint64(expect)))
                    if n:
                        yield buf.view(self.dtype)[:n]
                        expect += n
                        idx += n
                    if n < m:
                        bad = self._classify(h, f.fileno(), idx, words[n], expect)
                        break
            if bad is not None:
                if i == len(segs) - 1:
                    self.torn = bad
                    break
                raise JournalCorruptError(f"journal segment {bad.path}: offset={bad.offset} {bad.reason} "
                                          f"(not the last segment: the journal after it cannot be trusted)")
        self.last_seq = expect - 1

    def _classify(self, h: SegmentHeader, fd: int, idx: int, row: np.ndarray, expect: int):
        """None if the file is all zeros from record idx on (clean end), else a TornTail."""
        off = HEADER_SIZE + idx * h.record_size
        if row.any():
            why = f"seq={int(row[0])} expected={expect}" if int(row[0]) != expect else "checksum mismatch"
            return TornTail(h.path, off, expect, why)
        end = HEADER_SIZE + h.capacity * h.record_size
        pos = off
        while pos < end:
            chunk = np.frombuffer(os.pread(fd, min(8 << 20, end - pos), pos), np.uint8)
            if not len(chunk):
                break
            nz = np.flatnonzero(chunk)
            if len(nz):
                at = pos + int(nz[0])
                return TornTail(h.path, off, expect, f"zero record followed by data at offset={at}")
            pos += len(chunk)
        return None
