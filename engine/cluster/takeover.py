"""Taking a partition (docs/CLUSTER.md, "Failover"): fence, newest valid snapshot, replay of the
stream after it, then servable. The order is what makes the restored state exact:

1. **fence** at the new lease revision: from then on the previous owner's publishes on the
   subject are refused, so the stream up to the fence's sequence F is everything that will
   ever be published in earlier terms;
2. **snapshot**: the newest object of the partition that passes every check and covers a
   sequence S <= F (engine.cluster.snapstore); each refused one is logged and counted, and
   with none left the whole subject is replayed (logged and counted too). It is fetched
   while the fence is written and checked against F once the fence returned;
3. **replay** of the subject's messages S+1..F (ReplicationLog.replay checks every one) into
   the state: each published record applied once, none skipped (a failing message raises);
4. only then may the partition be served (the lease agent's ``prepare`` hook sets the
   ownership table's deadline after this returns).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from engine.cluster.snapstore import SnapshotObjects
from engine.cluster.trim import check_floor

ANY_SEQ = 1 << 62            # a snapshot look-up's bound before the fence's seq is known


@dataclass(frozen=True)
class Taken:
    partition: int
    revision: int
    fence_seq: int               # F: the replay's end; later messages are this term's
    snapshot: str | None         # the object restored (None: the whole subject replayed)
    snapshot_seq: int            # S
    replayed_msgs: int
    replayed_records: int


async def take_partition(p: int, revision: int, fence: Callable[[int, int], Awaitable[int | None]],
                         snaps: SnapshotObjects, restore: Callable[[dict | None], object],
                         apply: Callable[[np.ndarray], object], log: Callable[[str], object]) -> Taken | None:
    """Take partition ``p`` at lease ``revision`` (steps in the module doc). ``fence(p, rev)``
    returns the fence's stream sequence, or None when fencing refused it (a newer term is
    there: the partition is not taken and must not be served). ``restore(arrays or None)``
    resets the partition's state to a snapshot's arrays (None: empty); ``apply(records)``
    applies journal records (journal dtype) in stream order. Raises what the replay raises
    (ReplicationCorruptError names the message): the partition is then not servable."""
    # the newest snapshot object is fetched while the fence is written (two NATS round trips
    # at once). Objects cover their writer's own publishes, all before the fence, so one past
    # it is not expected (it is looked up again, bounded by F); an object written meanwhile
    # is missed, and the replay from the older one it found comes to the same state
    seen = len(snaps.counters.problems)
    early = asyncio.ensure_future(snaps.newest(p, upto=ANY_SEQ))
    try:
        f = await fence(p, revision)
    except BaseException:
        early.cancel()
        await asyncio.gather(early, return_exceptions=True)
        raise
    if f is None:
        early.cancel()
        await asyncio.gather(early, return_exceptions=True)
        log(f"risk-engine: cluster: partition {p}: fence at revision {revision} refused (a newer "
            f"term is on the stream); not taken")
        return None
    snap, msgs, recs = await rebuild(p, f, snaps, restore, apply, log, found=early, seen=seen)
    return Taken(p, revision, f, snap.name if snap is not None else None,
                 snap.covered_seq if snap is not None else 0, msgs, recs)


async def rebuild(p: int, upto: int, snaps: SnapshotObjects, restore: Callable[[dict | None], object],
                  apply: Callable[[np.ndarray], object], log: Callable[[str], object],
                  found: asyncio.Future | None = None, seen: int | None = None):
    """Steps 2 and 3: restore p's newest valid snapshot object covering at most stream seq
    ``upto``, then apply the subject's records after it up to ``upto``. Returns (the snapshot
    or None, messages replayed, records applied). ``found``: that object's look-up, started
    earlier without the bound (``seen``: the problems reported before it started)."""
    seen = len(snaps.counters.problems) if seen is None else seen
    snap = await found if found is not None else await snaps.newest(p, upto=upto)
    if snap is not None and snap.covered_seq > upto:
        snap = await snaps.newest(p, upto=upto)   # past the fence: not expected (see above)
    for line in snaps.counters.problems[seen:]:
        log(f"risk-engine: cluster: partition {p}: snapshot refused, not used: {line}")
    if snap is None:
        log(f"risk-engine: cluster: partition {p}: no usable snapshot; replaying the whole "
            f"subject up to seq {upto}")
    base = snap.covered_seq if snap is not None else 0
    await check_floor(snaps.log, p, base)         # a trimmed subject: no replay with a hole
    restore(snap.arrays if snap is not None else None)
    msgs = recs = 0
    async for m in snaps.log.replay(p, after_seq=base, end_seq=upto):
        msgs += 1
        if m.kind == "rec":
            apply(m.records)
            recs += len(m.records)
    await check_floor(snaps.log, p, base)         # trimmed during the replay (engine.cluster.trim)
    return snap, msgs, recs


async def write_snapshot(p: int, upto: int, snaps: SnapshotObjects, scratch, log) -> str:
    """Write p's snapshot object covering stream seq ``upto`` (a message of p's subject, e.g.
    this node's last publish). The state is computed from the stream, as a taker would: the
    newest valid object plus the records after it, in ``scratch`` (a PartitionState over
    tables of this node's own, not the serving ones: the serving tables already hold records
    not yet published, so they match no stream sequence). Returns the object's name."""
    await rebuild(p, upto, snaps, lambda arrays: scratch.restore(p, arrays), scratch.apply, log)
    return await snaps.put(p, upto, scratch.export(p))
