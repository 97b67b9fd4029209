"""Journal on-disk format: record dtype, checksum kernels, segment header, file naming.

Shared by the writer (engine.journal; its compiled append: shm.journal_append) and the
reader (engine.journal_reader).

Directory layout: ``w{writer:03d}-{first_seq:020d}.rjl`` segment files, one series per writer,
ordered by first sequence number. Each segment is preallocated (``posix_fallocate``, so a full
disk fails at rotation, not as SIGBUS inside the mmap), created under a temporary name and
renamed once its header is written::

    segment file
    +---------------------------+ 0
    | header (struct, 4096 B)   |  magic, version (2), header_size, schema_hash, record_size,
    |                           |  writer_id, first_seq, created_ns, capacity, header_crc32
    +---------------------------+ 4096  (page aligned: msync ranges need no rounding here)
    | record 0 (seq first_seq)  |
    | record 1                  |  capacity = (segment_bytes - 4096) // record_size
    | ...                       |
    +---------------------------+

    record (journal_dtype(event_dtype), every field 8-byte aligned)
    +-----+------------+-----------+------------+-----------+-------+------------+--------+-------+-----+-------+
    | seq | arrival_ns | client_id | request_id | event ... | score | generation | action | flags | pad | check |
    | u64 | i64        | u64       | u64        | schema    | f64   | u32        | u8     | u8    | u16 | u64   |
    +-----+------------+-----------+------------+-----------+-------+------------+--------+-------+-----+-------+

Words 1..3 and the event are the request ring slot's, and score..flags the response slot's
DECISION: ``journal_layout`` builds the record from the same descriptors as the slots
(shm.types.event_words, DECISION), so the worker can copy them word by word
(shm.journal_append). Version 1 records had no client_id and
request_id; this engine refuses a version-1 segment (JournalVersionError), never reads it
with the wrong layout (docs/DURABILITY.md, "Journal format versions").

``check`` is the per-record checksum and the commit marker: a 64-bit multiply-xorshift hash of
every other word of the record, with its low bit forced to 1 so that never-written (zero) space
never validates. A record is committed iff ``check`` matches and ``seq`` is the next expected
number; sequence numbers start at 1 and are gap-free per writer. An invalid record followed,
in the same segment, by a record committed at its own place (``resume_after``) is corruption
in the middle of the journal: reported with file, offset and seq, never taken for the end.
Otherwise the first invalid record ends the journal: zeros after it mean a clean end, anything
else is a torn tail (reported, ignored) in the last segment and corruption
(``JournalCorruptError``) in an earlier one.

Durability of each ``fsync`` policy: see docs/DURABILITY.md.
"""
from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass

import numpy as np
from numba import njit

from shm.descriptor import WORD_BYTES, Builder, Layout
from shm.types import DECISION, event_words

MAGIC = b"RJOURNL\x00"
VERSION = 2                  # 2: records carry client_id and request_id (1: they did not)
VERSIONS = (1, 2)            # readable by journal_dtype / read_header when asked (the upgrade)
HEADER_SIZE = 4096
_HEADER = struct.Struct("<8sIIQIIQqQ")         # followed by crc32 of these bytes (u32)
SUFFIX = ".rjl"
FSYNC_POLICIES = ("none", "interval_ms", "batch")
RETRY_NS = 100_000_000       # an unavailable journal (full disk) is retried this often

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


class JournalVersionError(JournalError):
    """A segment written in another format version: refused whole, never misread."""


class JournalGapError(JournalError):
    """The asked sequence number is not in the retained journal."""


@dataclass(frozen=True)
class CorruptRecords:
    """A run of ``count`` invalid records (seq .. seq + count - 1) that records after it
    outlive: corruption, not a torn tail (a torn tail is only a suffix at the write position)."""
    path: str
    offset: int      # byte offset in the file of the first invalid record
    seq: int         # its sequence number
    count: int
    reason: str

    def __str__(self) -> str:
        seqs = f"seq={self.seq}" if self.count == 1 else f"seq={self.seq}..{self.seq + self.count - 1}"
        return f"journal segment {self.path}: offset={self.offset} {seqs}: {self.reason}"


def journal_layout(event_dtype: np.dtype, version: int = VERSION) -> Layout:
    """The journal record's descriptor (see the module diagram): built from the request
    slot's words (shm.types.event_words) and the response slot's DECISION, so a record is
    the slots' words by construction; ``version`` 1: the previous format's, without
    client_id and request_id (engine.journal_upgrade)."""
    ev = np.dtype(event_dtype)
    if ev.itemsize % 8:
        raise ValueError(f"event_dtype: itemsize must be a multiple of 8, got {ev.itemsize}")
    if version not in VERSIONS:
        raise ValueError(f"version: one of {VERSIONS}, got {version}")
    if version == 1:
        b = (Builder("journal record v1").field("seq", fmt=np.uint64).field("arrival_ns", fmt=np.int64)
             .field("event", fmt=ev, align=WORD_BYTES))
    else:
        b = event_words("journal record", "seq", ev)
    return b.group(DECISION).field("check", fmt=np.uint64).build(align=WORD_BYTES)


def journal_dtype(event_dtype: np.dtype, version: int = VERSION) -> np.dtype:
    """The journal record dtype for an event dtype (journal_layout)."""
    return journal_layout(event_dtype, version).dtype()


# --- kernels: records seen as rows of u64 words; seq is word 0, check the last word ----------

@njit(cache=True, inline="always")
def _mix(h, word):
    """One round of the check: fold ``word`` into ``h``."""
    h ^= word
    h *= _K1
    return h ^ (h >> _S32)


@njit(cache=True, inline="always")
def _finish(h):
    """The check's final avalanche; the low bit forced to 1 (zero space never validates)."""
    h ^= h >> _S27
    h *= _K2
    h ^= h >> _S31
    return h | _ONE


@njit(cache=True, inline="always")
def _record_hash(row):
    """The check word of a record (u64 row): every word but the last, seq included. The
    writer's kernels (shm.journal_append) compute the same rounds on 8 records at once."""
    n = row.shape[0] - 1
    h = _K0 * np.uint64(n + 1)
    for k in range(n):
        h = _mix(h, row[k])
    return _finish(h)


@njit(cache=True)
def _count_valid(words, expect_seq):
    """Length of the prefix of rows numbered expect_seq.. whose checks match."""
    w = words.shape[1] - 1
    for i in range(words.shape[0]):
        if words[i, 0] != expect_seq + np.uint64(i) or words[i, w] != _record_hash(words[i]):
            return i
    return words.shape[0]


def resume_after(words, bad: int, expect: int) -> int:
    """Index of the first row after row ``bad`` (whose expected seq is ``expect``) that is
    committed at its own place (seq ``expect + (i - bad)``, check matching), or -1. Rows are
    u64 words as in the kernels; ``words`` may start anywhere in a segment."""
    rest = words[bad + 1:, 0]
    want = np.arange(expect + 1, expect + 1 + len(rest), dtype=np.uint64)
    for c in np.flatnonzero(rest == want).tolist():
        i = bad + 1 + c
        if _count_valid(words[i:i + 1], np.uint64(expect + 1 + c)):
            return i
    return -1


def walk_segment(words, first_seq: int, floor_seq: int = 0) -> tuple[int, list[tuple[int, int]]]:
    """(end, runs): ``end`` the row after the last committed record of a segment, stepping
    over corrupt runs; ``runs`` those runs as (row, count). A run is corrupt when a committed
    record follows it, or when it is not zeros to the end and its seq is <= ``floor_seq`` (a
    snapshot already counted it: it was written, so it is not a tail); then the walk goes on
    after ``floor_seq``. Zeros to the end are the journal's end, wherever the floor is."""
    cap, pos, runs = words.shape[0], 0, []
    while pos < cap:
        pos += int(_count_valid(words[pos:], np.uint64(first_seq + pos)))
        if pos >= cap:
            break
        r = resume_after(words, pos, first_seq + pos)
        if r < 0 and first_seq + pos <= floor_seq and words[pos:].any():
            r = min(cap, floor_seq - first_seq + 1)
        if r < 0:
            break
        runs.append((pos, r - pos))
        pos = r
    return pos, runs


def warm_up() -> None:
    """Compile (or load from the numba cache) the reader's kernel; the writer's are
    shm.journal_append.warm_up."""
    _count_valid(np.zeros((1, 2), np.uint64), np.uint64(1))


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
    version: int = VERSION

    def pack(self) -> bytes:
        body = _HEADER.pack(MAGIC, self.version, HEADER_SIZE, self.schema_hash, self.record_size,
                            self.writer_id, self.first_seq, self.created_ns, self.capacity)
        return body + struct.pack("<I", zlib.crc32(body))


def read_header(path: str, schema_hash: int, record_size: int, writer_id: int,
                version: int = VERSION) -> SegmentHeader:
    """Read and validate a segment header of format ``version``; raise JournalVersionError
    for another version, JournalCorruptError naming file and field."""
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
    if ver != version:
        raise JournalVersionError(
            f"journal segment {path}: format version {ver}, this engine reads version {version} "
            f"only (version 2 records carry client_id and request_id); convert it with "
            f"`risk-engine journal-upgrade` (docs/DURABILITY.md, Journal format versions)")
    if hsize != HEADER_SIZE:
        raise JournalCorruptError(f"journal segment {path}: version={ver} header_size={hsize} not supported")
    if shash != schema_hash:
        raise JournalCorruptError(f"journal segment {path}: schema_hash=0x{shash:016x} but the "
                                  f"engine's schema is 0x{schema_hash:016x}")
    if rsize != record_size or wid != writer_id:
        raise JournalCorruptError(f"journal segment {path}: record_size={rsize} writer_id={wid}, "
                                  f"expected record_size={record_size} writer_id={writer_id}")
    if size < HEADER_SIZE + cap * rsize:
        raise JournalCorruptError(f"journal segment {path}: file size {size} < header + capacity={cap} records")
    return SegmentHeader(path, shash, rsize, wid, first, created, cap, ver)


def segment_name(writer_id: int, first_seq: int) -> str:
    return f"w{writer_id:03d}-{first_seq:020d}{SUFFIX}"


def pending_successor(last: SegmentHeader) -> SegmentHeader | None:
    """The sealed, not yet published successor of segment ``last`` (``<name>.tmp`` of seq
    last.first_seq + last.capacity, with a valid header), or None. A writer with a
    housekeeping thread appends into it before the thread publishes it (docs/DURABILITY.md:
    rotation); it belongs to the journal only if ``last`` is complete."""
    path = os.path.join(os.path.dirname(last.path),
                        segment_name(last.writer_id, last.first_seq + last.capacity)) + ".tmp"
    try:
        h = read_header(path, last.schema_hash, last.record_size, last.writer_id, last.version)
    except (OSError, JournalCorruptError):      # absent, or still being prepared (no header)
        return None
    return h if h.first_seq == last.first_seq + last.capacity else None


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


def list_writers(directory: str) -> list[int]:
    """Writer ids that have at least one segment in the directory, ascending."""
    if not os.path.isdir(directory):
        return []
    ids = set()
    for name in os.listdir(directory):
        if name.startswith("w") and name.endswith(SUFFIX) and name[1:4].isdigit() and name[4:5] == "-":
            ids.add(int(name[1:4]))
    return sorted(ids)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_path(path: str) -> None:
    """fsync a file or a directory by name (a file: whatever any process wrote to it,
    through a shared mapping included)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync_path


def now_ns() -> int:
    return time.time_ns()
