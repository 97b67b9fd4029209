"""Snapshots: a set of named numpy arrays plus the journal position they include, written atomically.

File layout (little-endian)::

    +--------------------------------+ 0
    | head (64 B)                    |  magic, version, toc_len, file_size, toc_crc32, head_crc32
    +--------------------------------+ 64
    | TOC (JSON, toc_len bytes)      |  journal_seq {writer: seq}, generation, created_ns, meta,
    |                                |  arrays [{name, descr, shape, offset, nbytes, crc32}]
    +--------------------------------+ padded to 64
    | array 0 bytes (C order)        |  each array starts on a 64-byte boundary
    | array 1 bytes ...              |
    +--------------------------------+ file_size

Checksums: crc32 per array (in the TOC) and crc32 of the TOC (in the head), so the head's
TOC checksum covers everything; the head has its own crc32 and the exact file size.

Write protocol: temp file in the same directory, write, fsync, rename over the final name,
fsync the directory. A crash leaves either the old set of snapshots or the new one, plus at
most a ``.tmp`` file that the next write removes. ``load_snapshot`` validates size, every
checksum and every dtype/shape and raises ``SnapshotCorruptError`` naming the file and the
reason, so the caller can keep its previous state.
"""
from __future__ import annotations

import ast
import io
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from shm.journal_format import fsync_dir
from shm.runtime.securedir import ensure_private_dir, open_private

MAGIC = b"RSNAPSH\x00"
VERSION = 1
HEAD_SIZE = 64
ALIGN = 64
_HEAD = struct.Struct("<8sIIQI")      # magic, version, toc_len, file_size, toc_crc32; + head crc32
SUFFIX = ".rsnap"
PREFIX = "snap-"


class SnapshotCorruptError(ValueError):
    """The snapshot file is invalid; the message names the file and what failed."""


@dataclass(frozen=True)
class Snapshot:
    path: str
    arrays: dict[str, np.ndarray]
    journal_seq: dict[int, int]          # writer id -> last journal seq this state includes
    generation: int                      # ruleset generation at the snapshot
    created_ns: int                      # wall clock (time.time_ns) when taken
    meta: dict = field(default_factory=dict)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def write_snapshot(path: str, arrays: Mapping[str, np.ndarray], journal_seq: Mapping[int, int],
                   generation: int = 0, meta: Mapping | None = None,
                   created_ns: int | None = None) -> int:
    """Write a snapshot atomically (temp + fsync + rename + dir fsync). Returns the file size."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with os.fdopen(open_private(tmp), "wb") as f:
        file_size = _write_to(f, arrays, journal_seq, generation, meta, created_ns)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(d)
    return file_size


def snapshot_bytes(arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> bytes:
    """A snapshot in memory, in the file format (a partition snapshot object's payload:
    engine.cluster.snapstore); ``load_snapshot_bytes`` reads it back."""
    f = io.BytesIO()
    _write_to(f, arrays, {}, 0, meta, None)
    return f.getvalue()


def _write_to(f, arrays: Mapping[str, np.ndarray], journal_seq: Mapping[int, int],
              generation: int, meta: Mapping | None, created_ns: int | None) -> int:
    """The snapshot into the seekable binary file ``f``; returns its size."""
    created_ns = time.time_ns() if created_ns is None else int(created_ns)
    arrs = {str(k): np.asarray(v) if np.asarray(v).flags.c_contiguous else np.asarray(v).copy()
            for k, v in arrays.items()}   # not ascontiguousarray: it turns 0-d into 1-d
    entries = []
    toc = {"journal_seq": {str(int(k)): int(v) for k, v in journal_seq.items()},
           "generation": int(generation), "created_ns": created_ns, "meta": dict(meta or {}),
           "arrays": entries}
    for name, a in arrs.items():
        if a.dtype.hasobject:
            raise TypeError(f"snapshot array {name!r}: object dtype cannot be snapshotted")
        entries.append({"name": name, "descr": repr(np.lib.format.dtype_to_descr(a.dtype)),
                        "shape": list(a.shape), "offset": 0, "nbytes": a.nbytes,
                        "crc32": zlib.crc32(a.reshape(-1).view(np.uint8)) if a.size else 0})
    # offsets depend on the TOC length, which depends on the offsets' digits: iterate to a fixpoint
    toc_bytes = b""
    for _ in range(4):
        pos = end = HEAD_SIZE + len(toc_bytes)
        for e in entries:
            e["offset"] = pos = _align(pos)
            pos = end = pos + e["nbytes"]
        new = json.dumps(toc, sort_keys=True).encode()
        if new == toc_bytes:
            break
        toc_bytes = new
    file_size = end
    body = _HEAD.pack(MAGIC, VERSION, len(toc_bytes), file_size, zlib.crc32(toc_bytes))
    head = (body + struct.pack("<I", zlib.crc32(body))).ljust(HEAD_SIZE, b"\0")
    f.write(head)
    f.write(toc_bytes)
    for e in entries:
        f.seek(e["offset"])
        if e["nbytes"]:
            f.write(memoryview(arrs[e["name"]].reshape(-1).view(np.uint8)))
    end = f.seek(0, io.SEEK_END)
    if end < file_size:         # padding before an empty last array: a file's truncate
        f.write(bytes(file_size - end))     # extends it, a BytesIO's does not
    f.truncate(file_size)
    return file_size


def _bad(path: str, why: str) -> SnapshotCorruptError:
    return SnapshotCorruptError(f"snapshot {path}: {why}; refused")


def load_snapshot(path: str) -> Snapshot:
    """Load and validate a snapshot; raise SnapshotCorruptError(file, reason) on any mismatch."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise _bad(path, f"cannot open ({e.strerror})") from None
    with f:
        return _load_from(f, path, os.fstat(f.fileno()).st_size)


def load_snapshot_bytes(data: bytes, label: str) -> Snapshot:
    """``load_snapshot`` of a snapshot in memory (``snapshot_bytes``); errors name ``label``."""
    return _load_from(io.BytesIO(data), label, len(data))


def _load_from(f, path: str, size: int) -> Snapshot:
    raw = f.read(HEAD_SIZE)
    if len(raw) < _HEAD.size + 4:
        raise _bad(path, f"file size {size} is smaller than the {HEAD_SIZE}-byte head")
    magic, ver, toc_len, file_size, toc_crc = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise _bad(path, f"bad magic {magic!r}")
    if struct.unpack_from("<I", raw, _HEAD.size)[0] != zlib.crc32(raw[:_HEAD.size]):
        raise _bad(path, "head checksum mismatch")
    if ver != VERSION:
        raise _bad(path, f"version={ver} not supported (expected {VERSION})")
    if file_size != size:
        raise _bad(path, f"file size {size} != recorded size {file_size} (truncated or extended)")
    toc_bytes = f.read(toc_len)
    if len(toc_bytes) != toc_len or zlib.crc32(toc_bytes) != toc_crc:
        raise _bad(path, "table of contents checksum mismatch")
    try:
        toc = json.loads(toc_bytes)
        entries = toc["arrays"]
    except (ValueError, KeyError) as e:
        raise _bad(path, f"table of contents unreadable ({e})") from None
    arrays = {}
    for e in entries:
        arrays[e["name"]] = _read_array(path, f, e, file_size)
    return Snapshot(path, arrays, {int(k): int(v) for k, v in toc["journal_seq"].items()},
                    int(toc["generation"]), int(toc["created_ns"]), toc.get("meta", {}))


def _read_array(path: str, f, e: dict, file_size: int) -> np.ndarray:
    name = e["name"]
    try:
        dt = np.lib.format.descr_to_dtype(ast.literal_eval(e["descr"]))
        shape = tuple(int(x) for x in e["shape"])
    except (ValueError, TypeError, SyntaxError) as err:
        raise _bad(path, f"array {name!r}: bad dtype/shape ({err})") from None
    off, nbytes = int(e["offset"]), int(e["nbytes"])
    if dt.itemsize * int(np.prod(shape, dtype=np.int64)) != nbytes:
        raise _bad(path, f"array {name!r}: nbytes={nbytes} does not match dtype and shape {shape}")
    if off < HEAD_SIZE or off + nbytes > file_size:
        raise _bad(path, f"array {name!r}: offset={off} nbytes={nbytes} outside the file")
    buf = np.empty(nbytes, np.uint8)
    if nbytes:
        f.seek(off)
        if f.readinto(memoryview(buf)) != nbytes:
            raise _bad(path, f"array {name!r}: short read at offset={off}")
    crc = zlib.crc32(buf) if nbytes else 0
    if crc != int(e["crc32"]):
        raise _bad(path, f"array {name!r}: checksum mismatch at offset={off}")
    return buf.view(dt).reshape(shape)


class SnapshotStore:
    """A directory of snapshots ``snap-{created_ns:020d}.rsnap``; keeps the newest ``keep``."""

    def __init__(self, directory: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"snapshot.keep: must be >= 1, got {keep}")
        self.directory = str(directory)
        self.keep = keep
        ensure_private_dir(self.directory, "snapshot.dir")

    def paths(self) -> list[str]:
        """Snapshot files, newest first."""
        names = [n for n in os.listdir(self.directory) if n.startswith(PREFIX) and n.endswith(SUFFIX)]
        return [os.path.join(self.directory, n) for n in sorted(names, reverse=True)]

    def write(self, arrays: Mapping[str, np.ndarray], journal_seq: Mapping[int, int],
              generation: int = 0, meta: Mapping | None = None) -> str:
        """Write a new snapshot, then delete stale temp files and all but the newest ``keep``."""
        t = time.time_ns()
        newest = self.paths()
        if newest:                              # names must sort in write order
            t = max(t, int(os.path.basename(newest[0])[len(PREFIX):-len(SUFFIX)]) + 1)
        path = os.path.join(self.directory, f"{PREFIX}{t:020d}{SUFFIX}")
        write_snapshot(path, arrays, journal_seq, generation, meta, created_ns=t)
        for n in os.listdir(self.directory):
            if n.endswith(".tmp") and n.startswith("." + PREFIX):
                _unlink(os.path.join(self.directory, n))
        for old in self.paths()[self.keep:]:
            _unlink(old)
        return path

    def load_latest(self) -> tuple[Snapshot | None, list[str]]:
        """The newest snapshot that validates, and the errors of the newer ones refused."""
        errors = []
        for p in self.paths():
            try:
                return load_snapshot(p), errors
            except SnapshotCorruptError as e:
                errors.append(str(e))
        return None, errors

    def oldest_journal_seq(self, writer_id: int = 0) -> int:
        """Journal seq of the oldest kept snapshot (0 if none): the journal retention floor."""
        seqs = []
        for p in self.paths():
            try:
                seqs.append(load_snapshot_meta(p).get(writer_id, 0))
            except SnapshotCorruptError:
                continue
        return min(seqs) if seqs else 0


def load_snapshot_meta(path: str) -> dict[int, int]:
    """Only the journal_seq map of a snapshot (head and TOC validated, arrays not read)."""
    with open(path, "rb") as f:
        raw = f.read(HEAD_SIZE)
        if len(raw) < _HEAD.size + 4 or raw[:8] != MAGIC:
            raise _bad(path, "bad head")
        _, _, toc_len, _, toc_crc = _HEAD.unpack_from(raw)
        toc_bytes = f.read(toc_len)
    if zlib.crc32(toc_bytes) != toc_crc:
        raise _bad(path, "table of contents checksum mismatch")
    return {int(k): int(v) for k, v in json.loads(toc_bytes)["journal_seq"].items()}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
