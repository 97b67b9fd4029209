"""What this node may serve: per partition, the lease revision (the fencing token) and the
instant, on CLOCK_BOOTTIME in ns, until which the lease is valid (engine.cluster.agent writes
it; docs/CLUSTER.md "Lease protocol").

A reader judges validity against its own clock read, so a lease expires by itself when the
agent stops renewing it (agent stalled, stopped, or cut off from NATS): nothing has to run to
withdraw it. CLOCK_BOOTTIME, not CLOCK_MONOTONIC: it keeps counting while the machine is
suspended, so a machine that wakes up does not believe its old leases are still valid.

The two words of a partition are written by one thread in an order that keeps every torn
read safe: a new term clears the deadline before it changes the revision; a renewal writes
the revision before the later deadline; a loss clears the deadline first. A reader may so see
an older revision with a newer deadline (its records are refused by fencing) or a newer
revision with an older deadline (valid for less time), never a lease it does not hold.
The arrays are plain int64 numpy arrays: in the agent's process, or (``buf``) in the engine
node's ``ownership`` shared-memory segment (engine.cluster.node) for the ingress to read.
"""
from __future__ import annotations

import time

import numpy as np


def now_ns() -> int:
    """The lease clock: CLOCK_BOOTTIME (Linux), which counts through suspend."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class OwnershipTable:
    def __init__(self, partitions: int, buf=None):
        words = np.zeros(2 * partitions, np.int64) if buf is None else \
            np.frombuffer(buf, np.int64, 2 * partitions)
        self.partitions = partitions
        self.revision = words[:partitions]
        self.until_ns = words[partitions:]

    def begin(self, p: int, revision: int, until_ns: int) -> None:
        """A new term (a lease just taken)."""
        # plain stores, in program order: one writer thread, readers in this process under
        # the GIL, and x86 keeps stores in order; in shared memory they become release stores
        self.until_ns[p] = 0
        self.revision[p] = revision
        self.until_ns[p] = until_ns         # last: publishes the term

    def extend(self, p: int, revision: int, until_ns: int) -> None:
        """A renewal: the next revision and a later deadline."""
        self.revision[p] = revision
        self.until_ns[p] = until_ns

    def clear(self, p: int) -> None:
        self.until_ns[p] = 0
        self.revision[p] = 0

    def owns(self, p: int, now: int | None = None) -> int:
        """The lease revision if this node may serve partition ``p`` now, else 0."""
        rev = int(self.revision[p])          # revision before deadline: the writers' reverse order
        return rev if (now_ns() if now is None else now) < self.until_ns[p] else 0

    def owned(self, now: int | None = None) -> dict[int, int]:
        """{partition: revision} of every lease valid now."""
        t = now_ns() if now is None else now
        return {int(p): int(self.revision[p]) for p in np.flatnonzero(self.until_ns > t)}
