"""How far each journal writer's records are replicated: the node's ``replication`` segment
(docs/CLUSTER.md, "Serving with cluster:"). The journal tailer (engine.cluster.tailer) writes
it after each read of a writer; with ``cluster.ack: sync`` a worker holds the replies of a
batch until its records are covered (engine.ackgate).

Layout, three arrays of MAX_WRITERS int64 words (native order)::

    resolved_seq[w]   every record of writer w up to this seq is either acknowledged by the
                      stream (R3 quorum) or will never be published (``failed_seq``)
    failed_seq[w]     the highest seq of writer w that will never be published (its
                      partition's publish refused by fencing, journaled after its term ended,
                      or of a partition this node does not publish); 0: none
    journaled_seq[w]  the last seq worker w journaled and holds replies for (written by the
                      worker): the tailer reads the journal at once when it is past its cursor

The first two have one writer thread (the tailer), the third one writer per row (worker w);
readers are in other processes. The tailer stores ``failed_seq`` before ``resolved_seq`` (x86
keeps stores in order; CPython does not reorder numpy element stores), and a reader loads
``resolved_seq`` before ``failed_seq``: a reader that sees a record resolved also sees whether
it failed. Every word only grows.
"""
from __future__ import annotations

import numpy as np

SEGMENT = "replication"            # the segment's role (shm.names)
MAX_WRITERS = 256                  # journal writers (workers) a node may have


def segment_bytes() -> int:
    return MAX_WRITERS * 24


class ReplicationMarks:
    """The segment's arrays (module doc); ``buf`` None: private arrays (tests, a tailer alone)."""

    def __init__(self, buf=None):
        words = np.zeros(3 * MAX_WRITERS, np.int64) if buf is None else \
            np.frombuffer(buf, np.int64, 3 * MAX_WRITERS)
        self.resolved_seq = words[:MAX_WRITERS]
        self.failed_seq = words[MAX_WRITERS:2 * MAX_WRITERS]
        self.journaled_seq = words[2 * MAX_WRITERS:]

    def advance(self, w: int, resolved: int, failed: int = 0) -> None:
        """Writer ``w``'s records up to ``resolved`` are resolved, those up to ``failed``
        (<= resolved) possibly failed. Monotone: a lower value changes nothing."""
        if not 0 <= w < MAX_WRITERS:
            raise ValueError(f"writer={w}: outside 0..{MAX_WRITERS - 1}")
        if failed > self.failed_seq[w]:
            self.failed_seq[w] = failed            # first: a reader of resolved sees it (doc)
        if resolved > self.resolved_seq[w]:
            self.resolved_seq[w] = resolved

    def waiting(self, cursor: dict) -> bool:
        """Whether a worker journaled past what the tailer read (``cursor``: writer -> seq)
        and waits for it."""
        j = self.journaled_seq
        return any(int(j[w]) > s for w, s in cursor.items() if 0 <= w < MAX_WRITERS)

    def state(self, w: int, first_seq: int, last_seq: int) -> int:
        """Records ``first_seq..last_seq`` of writer ``w``: 1 all in the stream, -1 resolved
        but at least one possibly never published, 0 not resolved yet."""
        resolved = int(self.resolved_seq[w])       # before failed_seq (module doc)
        if last_seq > resolved:
            return 0
        return -1 if first_seq <= int(self.failed_seq[w]) else 1
