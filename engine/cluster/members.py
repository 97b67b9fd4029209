"""A lease agent's view of the other nodes, for balancing only (docs/CLUSTER.md, "Lease
protocol", membership): each agent heartbeats ``node.NAME`` every TTL (and at once when its
journal stops or starts working: ``"journal_ok": false`` while it cannot journal,
engine.cluster.drain) and reads every heartbeat and drain key. A heartbeat unchanged for
MEMBER_GONE_TTLS (on the reader's clock) counts its node as gone; a drained node or one whose
journal is unavailable is live but not counted in the share; nor is a node one of whose leases
this agent found expired, until a heartbeat of that node is first read more than a TTL after
(so written after the lapse): otherwise the share would release partitions to a node cut off
from NATS, for no one to take."""
from __future__ import annotations

from engine.cluster.ownership import now_ns

MEMBER_GONE_TTLS = 3        # a heartbeat unchanged this many TTLs: the node left (balancing only)


def share(partitions: int, live: int) -> int:
    """A node's share of ``partitions`` among ``live`` nodes: it takes free partitions up to it
    and releases what it holds over it (engine.cluster.agent), so the balance settles with
    every partition held and no node over ceil(partitions / live): 22/22/20 (or 22/21/21) for
    64 on 3 nodes."""
    if partitions < 1 or live < 1:
        raise ValueError(f"partitions={partitions} live={live}: both must be >= 1")
    return -(-partitions // live)


class Members:
    def __init__(self, agent):
        self.agent = agent
        self.seen: dict[str, tuple[int, int]] = {}   # node -> (heartbeat revision, first read at)
        self.lapsed: dict[str, int] = {}             # node -> when a lease of its was found expired

    def live(self) -> int:
        """Nodes counted in the share, this one included."""
        a, t = self.agent, now_ns()
        return 1 + sum(1 for n, (_, seen) in self.seen.items() if n != a.node
                       and n not in a.drain.nodes and t - seen < MEMBER_GONE_TTLS * a.ttl_ns
                       and seen > self.lapsed.get(n, -a.ttl_ns) + a.ttl_ns)

    async def beat(self) -> None:
        """Write this node's heartbeat, then read everyone's and the drain keys."""
        a = self.agent
        await a.store.heartbeat(a.node, a.advertise, journal_ok=a.drain.fit)
        revs, drained, unfit = await a.store.roster()
        a.drain.update(drained, unfit)
        t = now_ns()
        for n, rev in revs.items():
            if self.seen.get(n, (None,))[0] != rev:
                self.seen[n] = (rev, t)
