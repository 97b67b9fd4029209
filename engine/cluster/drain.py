"""A lease agent's part in `risk-engine cluster drain NODE` (docs/CLUSTER.md, "Operator
commands").

The command writes ``drain.NODE`` in the lease bucket; every agent reads the drain keys with
the heartbeats (once per TTL). The other agents count a drained node out of the share, so
their share grows enough to hold its partitions. The drained node's agent takes nothing and
hands its partitions over one at a time: it waits one member period (TTL plus two ticks)
after it first saw its key, so every live node has read it, then releases one lease (it
stops serving first) and releases the next only once another node serves that one: holds it
with a value marked ready (its take-over, the agent's prepare, returned). So at most one
partition is unserved at a time, for one take-over of the taker; clients in cluster mode
meanwhile get NOT_OWNER (owner=none, then the new owner) and retry. A value without the flag
(written by a node older than it) counts as ready: such a node cannot say more, and waiting
for a flag it never writes would stall the drain of a cluster being upgraded. A drained node
with no other live, undrained node to hand over to keeps its leases. Deleting the key
(`cluster undrain NODE`) ends the drain: the node takes partitions again by the usual balance.
"""
from __future__ import annotations

from engine.cluster.ownership import now_ns


class Drain:
    def __init__(self, agent):
        self.agent = agent
        self.nodes: set[str] = set()     # drained nodes, from the drain.* keys
        self.since_ns = 0                # when this node first saw its own key; 0: not drained
        self.last: int | None = None     # released last; the next waits until another serves it

    @property
    def active(self) -> bool:
        return self.since_ns > 0

    def update(self, drained: set[str]) -> None:
        a = self.agent
        self.nodes = set(drained)
        if a.node in drained and not self.active:
            self.since_ns = now_ns()
            a.emit("draining", held=sorted(a.held))
        elif a.node not in drained and self.active:
            self.since_ns, self.last = 0, None
            a.emit("undrained")

    async def step(self, current: dict) -> None:
        """One tick of a drained node: ``current`` holds the lease entries just read (every
        partition this node does not hold)."""
        a = self.agent
        if not a.held or now_ns() - self.since_ns < a.ttl_ns + 2 * int(a.tick_s * 1e9):
            return
        if self.last is not None:
            e = current.get(self.last)
            if e is None or e.value is None or e.value.get("node") == a.node \
                    or e.value.get("ready") is False:
                return                   # not served yet: one unserved partition at a time
            self.last = None
        if a._live() < 2:
            return                       # nobody live and undrained to take it
        p = min(a.held)
        self.last = p
        await a._release(p, why="drain")
