"""Replication lag per partition (docs/CLUSTER.md, "Replication lag"): what the owner journaled
and answered but has not yet published to the stream, per partition it publishes, as
**records** (exact: the loss window of ``ack: async`` in decisions) and the **age** of the
oldest of them (how far behind in time; the records' ``arrival_ns`` against this machine's
CLOCK_MONOTONIC, the ingress's clock, so no two machines' clocks are compared).

The owner computes it on the replication loop between tailer steps (engine.cluster.replicate)
and publishes it as ``lag.NODE`` in the lease bucket, where `risk-engine cluster status` reads
it beside the partition's lease; one write per node per PUBLISH_S at most (and one every
REFRESH_S while it does not change), whatever the number of partitions or the load.
"""
from __future__ import annotations

import json
import time

import numpy as np

from engine.cluster.tailer import JournalTailer

PUBLISH_S = 1.0              # the figure is recomputed (and written if it changed) this often
REFRESH_S = 10.0             # an unchanged figure is rewritten this often (its age shows staleness)
SCAN_CAP = 65_536            # records read per writer per computation; beyond it: "capped"


def lag_key(node: str) -> str:
    return f"lag.{node}"


def unpublished(tailer: JournalTailer, cap: int = SCAN_CAP) -> tuple[dict[int, tuple[int, int]], bool]:
    """{p: (records, oldest arrival_ns)} of the committed records this node has not published
    yet, for every partition it publishes (fenced, term not refused), and whether a writer had
    more than ``cap`` unread records (then the counts are lower bounds; the oldest is exact,
    being the first unread). A partition with nothing waiting is (0, 0)."""
    out = {p: [0, 0] for p in tailer.log.fenced}
    if not out:
        return {}, False
    capped = False
    for w, end in tailer.journal_end().items():
        start = tailer.cursor.get(w, end) + 1
        if end < start:
            continue
        capped |= end - start + 1 > cap
        it = tailer._reader(w).iter_batches(start, min(cap, end - start + 1))
        recs = next(it, None)
        it.close()
        if recs is None or not len(recs):
            continue
        parts = tailer.log.partition_of(recs)
        seqs = recs["seq"].astype(np.int64)
        for p, acc in out.items():
            mine = (parts == p) & (seqs > tailer.done.get(p, {}).get(w, 0))
            if p in tailer.cutoff:             # an ended term: nothing journaled after it
                mine &= seqs <= tailer.cutoff[p].get(w, 0)
            n = int(mine.sum())
            if n:
                first = int(recs["arrival_ns"][np.argmax(mine)])
                acc[0] += n
                acc[1] = first if not acc[1] else min(acc[1], first)
    return {p: (n, t) for p, (n, t) in out.items()}, capped


class LagReport:
    """The last computed figure and its KV encoding; ``due()`` says when to write it."""

    def __init__(self, node: str):
        self.node = node
        self.partitions: dict[int, tuple[int, float]] = {}   # p -> (records, age_s)
        self.capped = False
        self._written: bytes | None = None
        self._written_at = 0.0

    def update(self, tailer: JournalTailer) -> None:
        got, self.capped = unpublished(tailer)
        now = time.monotonic_ns()
        self.partitions = {p: (n, max(0, now - t) / 1e9 if n else 0.0) for p, (n, t) in sorted(got.items())}

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "capped": self.capped,
                           "partitions": {str(p): {"records": n, "age_s": round(a, 3)}
                                          for p, (n, a) in self.partitions.items()}},
                          separators=(",", ":")).encode()

    def due(self) -> bytes | None:
        """The value to write now, or None (unchanged and written within REFRESH_S)."""
        v = self.encode()
        if v == self._written and time.monotonic() - self._written_at < REFRESH_S:
            return None
        return v

    def written(self, v: bytes) -> None:
        self._written, self._written_at = v, time.monotonic()


def decode(data: bytes | None) -> dict[int, dict]:
    """A ``lag.NODE`` value as {p: {"records", "age_s"}}; anything malformed reads as {} (the
    bucket is writable by whoever reaches NATS: display only, never trusted further)."""
    try:
        v = json.loads(data or b"")
        parts = v["partitions"]
        out = {}
        for k, d in parts.items():
            n, a = d["records"], d["age_s"]
            if not (k.isdigit() and type(n) is int and n >= 0 and isinstance(a, (int, float)) and a >= 0):
                return {}
            out[int(k)] = {"records": n, "age_s": float(a), "capped": v.get("capped") is True}
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
