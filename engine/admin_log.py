"""admin.log: the operator's changes to risk state (lists, account state, halt), one record a
line, each numbered and checksummed like the event journal's records.

    <json payload>  <blake2b-128 hex of the payload bytes>\n
    payload = {"seq": N, "time_ns": T, "cmd": ..., ...}     (sort_keys, no spaces)

``seq`` starts at 1 and grows by exactly 1, so a record that was changed, inserted, removed
or moved is found, not only a damaged one. Reading stops with ``AdminLogCorrupt`` (file,
line, byte offset, seq) at the first such record. The one exception is a torn tail: bytes
after the last newline are a record whose write did not finish, never fsynced and so never
acknowledged; they are reported (``AdminLog.torn``) and cut off before the next append.

A checksum is not a signature: whoever can write the file can write valid records. What keeps
other users out is the journal directory (0700, checked at start, shm.runtime.securedir).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from shm.runtime.securedir import open_private

_DIGEST_BYTES = 16


class AdminLogCorrupt(ValueError):
    """A record in the middle of admin.log is damaged or out of sequence."""


@dataclass(frozen=True)
class TornRecord:
    path: str
    offset: int          # where the unfinished record starts (the file is cut here)
    nbytes: int


def _digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=_DIGEST_BYTES).hexdigest()


def encode(seq: int, time_ns: int, entry: dict) -> bytes:
    payload = json.dumps({**entry, "seq": seq, "time_ns": time_ns}, sort_keys=True,
                         separators=(",", ":")).encode()
    return payload + b" " + _digest(payload).encode() + b"\n"


def _decode(line: bytes, path: str, lineno: int, offset: int, expect_seq: int) -> dict:
    where = f"admin log {path}: line {lineno} offset={offset}"
    payload, sep, digest = line.rpartition(b" ")
    if not sep or len(digest) != 2 * _DIGEST_BYTES:
        raise AdminLogCorrupt(f"{where}: no checksum (expected seq={expect_seq}); not written by "
                              f"this engine version, or changed by hand")
    if _digest(payload).encode() != digest:
        raise AdminLogCorrupt(f"{where}: checksum mismatch (expected seq={expect_seq})")
    try:
        rec = json.loads(payload)
    except ValueError as e:
        raise AdminLogCorrupt(f"{where}: checksummed but not JSON ({e})") from None
    seq = rec.get("seq") if isinstance(rec, dict) else None
    if seq != expect_seq or not isinstance(rec.get("time_ns"), int) or not isinstance(rec.get("cmd"), str):
        raise AdminLogCorrupt(f"{where}: seq={seq!r}, expected seq={expect_seq} with time_ns and cmd "
                              f"(a record was removed, inserted or moved)")
    return rec


def read(path: str) -> tuple[list[dict], TornRecord | None, int]:
    """(records in order, torn tail or None, byte length of the intact part). A missing file
    is an empty log. Raises AdminLogCorrupt."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], None, 0
    records, off, lineno = [], 0, 0
    while off < len(data):
        end = data.find(b"\n", off)
        if end < 0:
            return records, TornRecord(path, off, len(data) - off), off
        lineno += 1
        records.append(_decode(data[off:end], path, lineno, off, len(records) + 1))
        off = end + 1
    return records, None, off


class AdminLog:
    """The supervisor's appender. Opening reads and checks the whole log (the next seq
    follows its last record) and cuts off a torn tail."""

    def __init__(self, path: str):
        self.path = path
        records, self.torn, good = read(path)
        self.next_seq = len(records) + 1
        if self.torn is not None:
            fd = open_private(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, good)
                os.fsync(fd)
            finally:
                os.close(fd)

    def append(self, time_ns: int, entry: dict) -> int:
        """Write and fsync one record; returns its seq. Raises OSError (nothing acknowledged)."""
        line = encode(self.next_seq, time_ns, entry)
        fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            try:
                n = os.write(fd, line)
                if n != len(line):
                    raise OSError(f"admin log {self.path}: short write {n} of {len(line)} bytes")
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)         # leave no half record for the next append
                raise
        finally:
            os.close(fd)
        self.next_seq += 1
        return self.next_seq - 1
