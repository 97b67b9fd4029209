"""The lease agent's view of every partition's lease: a KV watch on the lease bucket, whose
``p.*`` keys are the leases (docs/CLUSTER.md, "Lease protocol"), so a contender learns of a
write when the server pushes it instead of reading every lease it does not hold each tick
(P reads per TTL/8).

Per partition it keeps the last entry delivered and when this node first saw its revision,
on this node's CLOCK_BOOTTIME, stamped when the update is taken off the watch: after the
server stored the write, so after the writer's own stamp (what the contender's rule needs;
engine.cluster.agent). A delivery late, lost or repeated only makes that first sight later
or leaves an old revision in view: the take that expects an old revision is refused by the
compare-and-set, and the agent then reads that lease directly (``note`` of the read) and
waits a TTL from that read. Revisions never go back in the view (a consumer reset delivers
values again). Server timestamps play no part: a first sight through a watch is within a
delivery of the write, which is all a server clock could save, and comparing it with this
node's would add an assumption on the two clocks.
"""
from __future__ import annotations

import asyncio

import nats.errors

from engine.cluster.leases import Entry
from engine.cluster.ownership import now_ns
from ingress.partmap import LEASE_PREFIX, caught_up, decode, watch_all

RESTART_PAUSE_S = 0.25           # a watch that failed is started again after this pause
_GONE = ("DEL", "PURGE")


class LeaseView:
    def __init__(self, partitions: int, ttl_ns: int, on_error=None):
        self.partitions, self.ttl_ns = partitions, ttl_ns
        self.current: dict[int, Entry] = {}
        self.seen: dict[int, tuple[int, int]] = {}      # p -> (revision, first seen at)
        self.synced = False          # the watch delivered every current value once
        self.wake = asyncio.Event()  # set on a change the agent acts on at once (a lease freed)
        self.updates = 0
        self.on_error = on_error or (lambda e: None)

    # --- what the agent reads ------------------------------------------------------------------

    def entry(self, p: int) -> Entry | None:
        """p's lease as last seen; a key never written reads free at revision 0 once the watch
        has synced; None: not known yet."""
        e = self.current.get(p)
        return e if e is not None or not self.synced else Entry(0, None)

    def expired(self, p: int, t: int) -> bool:
        """True once p's current revision, held by someone, has been seen unchanged for a full
        TTL on this node's clock (a revision first seen now is stamped now)."""
        e = self.entry(p)
        if e is None or e.value is None:
            return False
        rev, at = self.seen.get(p, (None, 0))
        if rev != e.revision:
            self.seen[p] = (e.revision, t)
            return False
        return t - at >= self.ttl_ns

    def next_expiry_ns(self, held) -> int | None:
        """The earliest time a lease held by another node would expire, if not renewed."""
        times = [at + self.ttl_ns for p, (rev, at) in self.seen.items()
                 if p not in held and (e := self.current.get(p)) is not None
                 and e.value is not None and e.revision == rev]
        return min(times, default=None)

    def first_seen(self, p: int) -> int:
        return self.seen.get(p, (0, 0))[1]

    def forget(self, p: int) -> None:
        """Drop p's first sight (its lease lost or released here, a take refused): the next
        sight of any revision starts a new TTL."""
        self.seen.pop(p, None)

    # --- what the watch and direct reads write --------------------------------------------------

    def note(self, p: int, e: Entry, t: int | None = None) -> None:
        """Record an entry of p read or delivered now (stamped after it arrived)."""
        cur = self.current.get(p)
        if cur is not None and e.revision < cur.revision:
            return                   # older than what is known: a value delivered again
        self.current[p] = e
        if self.seen.get(p, (None,))[0] != e.revision:
            self.seen[p] = (e.revision, now_ns() if t is None else t)
        self.updates += 1
        if e.value is None:
            self.wake.set()          # freed: a node with room takes it now, not at its next tick

    def _delivered(self, u) -> None:
        key = u.key
        if not key.startswith(LEASE_PREFIX) or not key[len(LEASE_PREFIX):].isdigit():
            return
        p = int(key[len(LEASE_PREFIX):])
        if p >= self.partitions:
            return
        gone = u.operation in _GONE or not u.value
        self.note(p, Entry(u.revision, None if gone else decode(u.value), u.created))

    async def follow(self, js, bucket: str, stop: asyncio.Event) -> None:
        """Watch the bucket's leases until ``stop``; a watch that fails (NATS down, the
        consumer gone) is started again after RESTART_PAUSE_S, delivering every current
        value again."""
        while not stop.is_set():
            w = None
            try:
                _, w, last = await watch_all(js, bucket)
                while not stop.is_set():
                    try:
                        u = await w.updates(timeout=0.5)
                    except (nats.errors.TimeoutError, asyncio.TimeoutError):
                        continue     # nothing changed: look at the stop flag again
                    if u is None:    # nats-py's marker: not trusted (partmap.caught_up)
                        continue
                    self._delivered(u)
                    if caught_up(u, last) and not self.synced:   # every current value delivered
                        self.synced = True
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:   # noqa: BLE001  NATS down, bucket gone: watched again
                self.on_error(e)
                try:
                    await asyncio.wait_for(stop.wait(), RESTART_PAUSE_S)
                except asyncio.TimeoutError:
                    pass
            finally:
                if w is not None:
                    try:
                        await w.stop()
                    except Exception:   # noqa: BLE001  the connection may be gone
                        pass
