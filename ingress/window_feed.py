"""Decisions another node made, fed into this node's idempotency window (docs/CLUSTER.md,
"Failover in serve": exactly once across a hand-over).

A node taking a partition replays the records the previous owner published; each carries the
request's client id and request id and the decision (shm.journal_format). ``entries`` turns
them into window entries, one per (client id, request id), with the response slots a retry is
answered from (score, generation, action and flags as journaled; fired rule indexes are not
journaled, so the list is empty) and the records hash a resend is compared by (the events'
bytes in journal order, padding left out as the live ingress leaves it: the journal stores
zeros there, the client's bytes may hold anything; the request's order for a request whose
events went to one writer).

The channel from the supervisor (which takes partitions) to the ingress process (which owns
the window): the supervisor writes ``window-feed.<seq>`` (0600, atomically, in the 0700 run
directory) and then raises ``supervisor.window_feed`` to seq; the ingress, every service round
(ingress.router), inserts every pending file's entries into its window, removes the file and
echoes seq in ``ingress.window_fed`` [0]; a file it cannot read whole is reported on stderr,
removed, and its seq put in ``ingress.window_fed`` [1] (the taker then fails the take). The
taker serves the partition only once its seq is echoed.
"""
from __future__ import annotations

import os
import struct
import sys
import time

import numpy as np

from shm.runtime.securedir import read_private_file, write_private_file
from shm.types import RESPONSE_SLOT_DTYPE
from ingress.dedup import IdempotencyWindow, record_mask, records_hash

PREFIX = "window-feed."
MAGIC = b"RWFEED01"
_HEAD = struct.Struct("<8sQQQ")         # magic, seq, entries, events
_ENTRY = np.dtype([("client_id", "<u8"), ("request_id", "<u8"), ("n", "<i8"), ("rhash", "<i8")])
_SLOT = RESPONSE_SLOT_DTYPE.itemsize


class WindowFeedError(RuntimeError):
    """A feed file that is not exactly what the writer wrote."""


def entries(batches) -> tuple[np.ndarray, np.ndarray]:
    """(entries of _ENTRY dtype, response slots) of journal record arrays (one partition's,
    in stream order): one entry per (client_id, request_id) with client_id != 0, its slots in
    the records' order. Client id 0 is never deduplicated (docs/PROTOCOL.md, section 5). The
    events are hashed as the ingress hashes a request (dedup.records_hash: padding left out;
    rows are selected as raw bytes, numpy copies of structured arrays do not keep padding)."""
    raw = [np.ascontiguousarray(b).view(np.uint8).reshape(len(b), -1) for b in batches if len(b)]
    if not raw:
        return np.zeros(0, _ENTRY), np.zeros(0, RESPONSE_SLOT_DTYPE)
    dt = batches[0].dtype
    raw = np.concatenate(raw)
    r = raw.view(dt).reshape(-1)
    keep = np.flatnonzero(r["client_id"] != 0)
    raw, r = raw[keep], r[keep]                 # raw: bytes kept; r: the fields read
    if not len(r):
        return np.zeros(0, _ENTRY), np.zeros(0, RESPONSE_SLOT_DTYPE)
    keys = np.stack([r["client_id"], r["request_id"]], axis=1)
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(first, kind="stable")            # entries in the order first seen
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    idx = np.argsort(rank[inv], kind="stable")          # records grouped by entry, in order
    raw, grp = raw[idx], rank[inv][idx]
    r = raw.view(dt).reshape(-1)
    counts = np.bincount(grp, minlength=len(order))
    out = np.zeros(len(order), _ENTRY)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out["client_id"], out["request_id"] = r["client_id"][starts], r["request_id"][starts]
    out["n"] = counts
    off, size = dt.fields["event"][1], dt.fields["event"][0].itemsize
    ev = np.ascontiguousarray(raw[:, off:off + size])
    fmask = record_mask(dt["event"])
    for k, (s, n) in enumerate(zip(starts.tolist(), counts.tolist())):
        out["rhash"][k] = records_hash(ev[s:s + n].reshape(-1), fmask)
    slots = np.zeros(len(r), RESPONSE_SLOT_DTYPE)
    for f in ("score", "generation", "action", "flags"):
        slots[f] = r[f]
    return out, slots


def path_of(run_dir, seq: int) -> str:
    return os.path.join(os.fspath(run_dir), f"{PREFIX}{seq:020d}")


def write(run_dir, seq: int, ents: np.ndarray, slots: np.ndarray) -> str:
    """Write feed file ``seq`` (the caller raises supervisor.window_feed after)."""
    if int(ents["n"].sum()) != len(slots):
        raise ValueError(f"seq={seq}: entries count {int(ents['n'].sum())} events, slots {len(slots)}")
    p = path_of(run_dir, seq)
    write_private_file(p, _HEAD.pack(MAGIC, seq, len(ents), len(slots)) + ents.astype(_ENTRY).tobytes()
                       + np.ascontiguousarray(slots, RESPONSE_SLOT_DTYPE).tobytes())
    return p


def read(run_dir, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries and slots of feed file ``seq``, checked whole (WindowFeedError otherwise)."""
    p = path_of(run_dir, seq)
    data = read_private_file(p)
    if len(data) < _HEAD.size:
        raise WindowFeedError(f"{p}: {len(data)} B, shorter than its header")
    magic, s, ne, nv = _HEAD.unpack_from(data)
    size = _HEAD.size + ne * _ENTRY.itemsize + nv * RESPONSE_SLOT_DTYPE.itemsize
    if magic != MAGIC or s != seq or len(data) != size:
        raise WindowFeedError(f"{p}: magic={magic!r} seq={s} size={len(data)}, expected {MAGIC!r} "
                              f"seq={seq} size={size}")
    ents = np.frombuffer(data, _ENTRY, ne, _HEAD.size)
    slots = np.frombuffer(data, RESPONSE_SLOT_DTYPE, nv, _HEAD.size + ne * _ENTRY.itemsize)
    if (ents["n"] < 1).any() or int(ents["n"].sum()) != nv:
        raise WindowFeedError(f"{p}: entry counts do not add up to its {nv} slots")
    return ents, slots


class WindowFeed:
    """The ingress's side: ``service()`` inserts the pending feed files into ``dedup``, at most
    PER_ROUND entries a call (the ingress serves requests between two calls)."""

    PER_ROUND = 2048             # about 6 ms of inserts

    def __init__(self, run_dir, dedup: IdempotencyWindow, block):
        self.run_dir, self.dedup = run_dir, dedup
        self.want = block.view("supervisor.window_feed")
        self.fed = block.view("ingress.window_fed")
        self._file = None        # (seq, entries, slot bytes, next entry, its slot offset)

    def service(self) -> int:
        """Feed the files up to supervisor.window_feed; returns the entries inserted."""
        n = 0
        while n < self.PER_ROUND:
            if self._file is None:
                seq = int(self.fed[0]) + 1
                if seq > self.want[0]:
                    return n
                if not self._open(seq):
                    continue
            seq, ents, raw, k, off = self._file
            now = time.monotonic_ns()
            for cid, rid, m, rhash in ents[k:k + self.PER_ROUND - n].tolist():
                self.dedup.finish((cid, rid), raw[off * _SLOT:(off + m) * _SLOT], now, rhash=rhash)
                off, k, n = off + m, k + 1, n + 1
            self._file = (seq, ents, raw, k, off)
            if k == len(ents):
                self._file = None
                self.fed[0] = seq
        return n

    def _open(self, seq: int) -> bool:
        """Load feed file ``seq`` and remove it; False (and seq done with, refused) if it
        cannot be read whole."""
        try:
            ents, slots = read(self.run_dir, seq)
        except (OSError, WindowFeedError) as e:
            print(f"risk-engine: ingress: window feed {seq} not applied: {e}", file=sys.stderr, flush=True)
            ents = None
        try:
            os.unlink(path_of(self.run_dir, seq))
        except FileNotFoundError:
            pass
        if ents is None or not self.dedup.enabled:
            if ents is None:
                self.fed[1] = seq
            self.fed[0] = seq
            return False
        self._file = (seq, ents, slots.view(np.uint8).reshape(-1), 0, 0)
        return True
