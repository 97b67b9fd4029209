"""A lease agent's hand-over of every partition it holds: `risk-engine cluster drain NODE`
(docs/CLUSTER.md, "Operator commands"), and a node whose journal is unavailable (a full or
failing disk: docs/CLUSTER.md, "Failures").

The command writes ``drain.NODE`` in the lease bucket; every agent reads the drain keys with
the heartbeats (once per TTL). A node whose workers cannot journal says so in its heartbeat
(``"journal_ok": false``, written at once when it finds out, engine.cluster.members). The
other agents count a drained or journal-less node out of the share, so their share grows
enough to hold its partitions. Such a node's agent takes nothing and hands its partitions over
one at a time: it waits one member period (TTL plus two ticks) after it first saw its key, so
every live node has read it, or JOURNAL_HANDOVER_TTLS lease TTLs (at least a member period)
after it found its journal unavailable, then releases one lease (it stops serving first) and
releases the next only once another node serves that one: holds it with a value marked ready
(its take-over, the agent's prepare, returned). So at most one partition is unserved at a
time, for one take-over of the taker; clients in cluster mode meanwhile get NOT_OWNER
(owner=none, then the new owner) and retry. A value without the flag (written by a node older
than it) counts as ready: such a node cannot say more, and waiting for a flag it never writes
would stall the drain of a cluster being upgraded. A node with no other live, undrained node
whose journal works keeps its leases. Deleting the key (`cluster undrain NODE`), or the
journal working again (its workers retry the allocation every 0.1 s, also when idle), ends
the hand-over: the node takes partitions again by the usual balance.
"""
from __future__ import annotations

from engine.cluster.ownership import now_ns

# a journal unavailable this many lease TTLs (one member period at least): its partitions are
# handed over. Short failures (one failed sync, retried 0.1 s later) move nothing; a full disk
# moves them about a TTL after its first refused event instead of never.
JOURNAL_HANDOVER_TTLS = 1


class Drain:
    def __init__(self, agent, journal_ok=None):
        self.agent = agent
        self.nodes: set[str] = set()     # out of the share: drained (drain.* keys) or journal-less
        self.since_ns = 0                # when this node first saw its own key; 0: not drained
        self.unfit_ns = 0                # when its journal was found unavailable; 0: it works
        self.journal_ok = journal_ok or (lambda: True)   # False while a worker cannot journal
        self.last: int | None = None     # released last; the next waits until another serves it

    @property
    def active(self) -> bool:
        """Taking nothing: drained or its journal unavailable (handing over once due)."""
        return self.since_ns > 0 or self.unfit_ns > 0

    @property
    def fit(self) -> bool:
        return self.unfit_ns == 0

    def update(self, drained: set[str], unfit: set[str] = frozenset()) -> None:
        a = self.agent
        self.nodes = set(drained) | set(unfit)
        if a.node in drained and not self.since_ns:
            self.since_ns = now_ns()
            a.emit("draining", held=sorted(a.held))
        elif a.node not in drained and self.since_ns:
            self.since_ns = 0
            self.last = None if self.fit else self.last
            a.emit("undrained")

    def check_journal(self) -> bool:
        """Read the journal's state; True when it changed (the heartbeat says so at once)."""
        ok = bool(self.journal_ok())
        if ok == self.fit:
            return False
        a = self.agent
        if ok:
            self.unfit_ns = 0
            self.last = None if not self.since_ns else self.last
            a.emit("journal_available")
        else:
            self.unfit_ns = now_ns()
            a.emit("journal_unavailable", held=sorted(a.held), handover_ns=self._wait_ns(True))
        return True

    def _wait_ns(self, journal: bool) -> int:
        a = self.agent
        member = a.ttl_ns + 2 * int(a.tick_s * 1e9)
        return max(member, JOURNAL_HANDOVER_TTLS * a.ttl_ns) if journal else member

    def _due(self) -> bool:
        t = now_ns()
        return (self.since_ns > 0 and t - self.since_ns >= self._wait_ns(False)) or \
            (self.unfit_ns > 0 and t - self.unfit_ns >= self._wait_ns(True))

    async def step(self, current: dict) -> None:
        """One tick of a node handing over: ``current`` holds the lease entries just read
        (every partition this node does not hold)."""
        a = self.agent
        if not a.held or not self._due():
            return
        if self.last is not None:
            e = current.get(self.last)
            if e is None or e.value is None or e.value.get("node") == a.node \
                    or e.value.get("ready") is False:
                return                   # not served yet: one unserved partition at a time
            self.last = None
        if a.members.live() < 2:
            return                       # nobody live and undrained to take it
        p = min(a.held)
        self.last = p
        await a._release(p, why="drain" if self.since_ns else "journal unavailable")
