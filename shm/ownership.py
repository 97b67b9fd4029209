"""What a cluster node may serve, and who serves what it may not: the node's ``ownership``
shared-memory segment (docs/CLUSTER.md, "Serving with cluster:"). The lease agent
(engine.cluster.agent) writes the leases, the node's partition-map watcher the owners'
addresses; the ingress reads both per request (ingress.ownercheck).

Layout for P partitions (every word int64, native order)::

    revision[P]   the lease revision (the fencing token), 0: none
    until_ns[P]   CLOCK_BOOTTIME deadline of the lease, 0: none
    owner[P]      ADDR_SLOT bytes each: version (u64, odd while written), length (u64),
                  then the owner's advertised address (ASCII, at most ADDR_MAX bytes)

A reader judges a lease's validity against its own clock read, so a lease expires by itself
when the agent stops renewing it (agent stalled, stopped, or cut off from NATS): nothing has
to run to withdraw it. CLOCK_BOOTTIME, not CLOCK_MONOTONIC: it keeps counting while the
machine is suspended, so a machine that wakes up does not believe its old leases are still
valid.

The two lease words of a partition are written by one thread in an order that keeps every
torn read safe: a new term clears the deadline before it changes the revision; a renewal
writes the revision before the later deadline; a loss clears the deadline first. A reader may
so see an older revision with a newer deadline (its records are refused by fencing) or a
newer revision with an older deadline (valid for less time), never a lease it does not hold.
An owner's address is a seqlock: one writer, readers retry a torn read a bounded number of
times and get "" (unknown) after that. The address is only a redirect hint: a wrong one
costs a client a hop, never a decision.
"""
from __future__ import annotations

import time

import numpy as np

SEGMENT = "ownership"              # the segment's role (shm.names)
ADDR_SLOT = 256                    # bytes per partition of the owner table
ADDR_MAX = ADDR_SLOT - 16          # longest address kept (tcp://HOST:PORT, a DNS name fits)
_READ_TRIES = 64                   # seqlock retries before an address reads as unknown
NO_OWNER = "none"                  # NOT_OWNER's owner when no node is known (PROTOCOL.md)


def now_ns() -> int:
    """The lease clock: CLOCK_BOOTTIME (Linux), which counts through suspend."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def segment_bytes(partitions: int) -> int:
    return partitions * (16 + ADDR_SLOT)


def valid_address(a) -> bool:
    """An address a client may be redirected to: tcp://HOST:PORT in printable ASCII (a value
    in the lease bucket is written by whoever can write NATS: checked, never trusted)."""
    if not isinstance(a, str) or not a.startswith("tcp://") or not 7 < len(a) <= ADDR_MAX:
        return False
    if not a.isascii() or not a.isprintable() or any(c.isspace() for c in a):
        return False
    host, _, port = a[6:].rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


class OwnershipTable:
    """The segment's arrays (module doc); ``buf`` None: private arrays (an agent run alone)."""

    def __init__(self, partitions: int, buf=None):
        size = segment_bytes(partitions)
        raw = np.zeros(size, np.uint8) if buf is None else np.frombuffer(buf, np.uint8, size)
        words = raw[:16 * partitions].view(np.int64)
        self.partitions = partitions
        self.revision = words[:partitions]
        self.until_ns = words[partitions:]
        slots = raw[16 * partitions:].reshape(partitions, ADDR_SLOT)
        self._addr_words = slots[:, :16].view(np.int64)          # (P, 2): version, length
        self._addr_bytes = slots[:, 16:]

    # --- the lease agent's writes (one thread) ------------------------------------------------

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

    # --- validity (any process) ---------------------------------------------------------------

    def owns(self, p: int, now: int | None = None) -> int:
        """The lease revision if this node may serve partition ``p`` now, else 0."""
        rev = int(self.revision[p])          # revision before deadline: the writers' reverse order
        return rev if (now_ns() if now is None else now) < self.until_ns[p] else 0

    def owned(self, now: int | None = None) -> dict[int, int]:
        """{partition: revision} of every lease valid now."""
        t = now_ns() if now is None else now
        return {int(p): int(self.revision[p]) for p in np.flatnonzero(self.until_ns > t)}

    def first_foreign(self, parts: np.ndarray, now: int | None = None) -> int:
        """Index of the first of ``parts`` (partition per event) this node holds no valid
        lease on now, or -1 when it may serve them all."""
        t = now_ns() if now is None else now
        bad = self.until_ns[parts] <= t
        return int(bad.argmax()) if bad.any() else -1

    # --- owners' addresses (one writer: the node's partition-map watcher) ---------------------

    def set_owner(self, p: int, address: str) -> None:
        """Record ``address`` (tcp://HOST:PORT) as partition ``p``'s owner; "" or an address
        that fails valid_address: unknown."""
        data = address.encode() if valid_address(address) else b""
        w = self._addr_words[p]
        v = int(w[0])
        w[0] = v + 1                        # odd: being written (release order: x86 stores)
        w[1] = len(data)
        self._addr_bytes[p, :len(data)] = np.frombuffer(data, np.uint8)
        w[0] = v + 2                        # even again: published

    def owner(self, p: int) -> str:
        """Partition ``p``'s owner's address as last recorded, "" if unknown."""
        w = self._addr_words[p]
        for _ in range(_READ_TRIES):
            v = int(w[0])                   # acquire order: x86 loads are not reordered
            n = int(w[1])
            if v & 1 or not 0 <= n <= ADDR_MAX:
                continue
            data = self._addr_bytes[p, :n].tobytes()
            if int(w[0]) == v:
                return data.decode("ascii", "replace")
        return ""
