"""Lease writes of this agent whose outcome it does not know: a take or renewal that raised
(a timeout, a connection lost) may have been stored by the stream all the same, its
acknowledgement lost on the way back. Unresolved, such a write costs a partition a TTL
unserved: a take so stored reads as another holder's lease, to be waited out for a TTL
before it is taken again; a renewal so stored makes the next renewal, which expects the old
revision, refused, and the lease is given up.

Every lease value this agent writes carries its writer id (``w``, random per agent run:
ingress.partmap.encode), so an entry the watch delivers, or a refused write reads, tells
whether it is one of this run's writes. Adopting it is what the acknowledgement would have
done, with the earliest stamp among the writes of that partition still unknown: whichever
of them was stored was sent after that stamp, so serving until stamp + TTL - margin keeps
the protocol's rule (engine.cluster.agent). A write not stored is forgotten once the view
shows another writer's entry, or after UNKNOWN_TTLS lease TTLs (the watch would have
delivered it by then); nothing is adopted after its own agent released the partition.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.cluster.leases import Entry
from engine.cluster.ownership import now_ns

UNKNOWN_TTLS = 2            # an unknown write not seen stored within this many TTLs: not stored


@dataclass(frozen=True)
class Unknown:
    stamp_ns: int           # the clock before the earliest unknown write of the partition was sent
    last: int               # the revision it expected
    seen_ns: int            # first sight of ``last`` (a take's timeline)
    free: bool              # a take of a free lease (not an expired one)


class UnknownWrites:
    def __init__(self, writer: str, ttl_ns: int):
        self.writer, self.ttl_ns = writer, ttl_ns
        self.by_p: dict[int, Unknown] = {}

    def wrote(self, p: int, stamp_ns: int, last: int, seen_ns: int = 0, free: bool = False) -> None:
        """A write of p raised: stored or not, unknown. The earliest such stamp is kept."""
        self.by_p.setdefault(p, Unknown(stamp_ns, last, seen_ns, free))

    def forget(self, p: int) -> None:
        """An acknowledged write of p, or p released: nothing unknown is adopted any more."""
        self.by_p.pop(p, None)

    def clear(self) -> None:
        self.by_p.clear()

    def ours(self, e: Entry | None) -> bool:
        return e is not None and e.value is not None and e.value.get("w") == self.writer

    def adoptable(self, entry, held) -> list[tuple[int, int, Unknown]]:
        """(p, revision, unknown) for each partition whose current entry (``entry(p)``) is one
        of this run's unknown writes, newer than the revision held (``held``: p -> (revision,
        stamp)); forgets those shown not stored."""
        out, t = [], now_ns()
        for p, u in list(self.by_p.items()):
            e = entry(p)
            mine = held.get(p, (0,))[0]
            if self.ours(e) and e.revision > max(mine, u.last):
                out.append((p, e.revision, u))
                del self.by_p[p]
            elif (e is not None and e.revision > max(mine, u.last)) or t - u.stamp_ns > UNKNOWN_TTLS * self.ttl_ns:
                del self.by_p[p]             # another writer's since, or never delivered: not stored
        return out
