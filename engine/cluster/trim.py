"""Trimming a partition's subject below its newest verified snapshot object (docs/CLUSTER.md,
"Trimming the stream"), so ``RISK_ENGINE_JOURNAL`` does not grow without bound.

A take-over needs the newest snapshot object (covering stream sequence S) and the subject's
messages after S; the message at S itself stays too (the object's check reads it). So after
the owner wrote an object covering S, it

1. reads the object back through every check a taker makes (engine.cluster.snapstore): an
   object that fails (a failed or corrupt write) allows no trim;
2. records the **floor** S on the subject ``<prefix>.trim<P>`` (compare-and-set, only ever
   raised) and only once that is stored
3. purges the partition's messages below S.

A taker whose replay base (its snapshot's S, 0 for a full replay) is below the floor fails
its take instead of replaying a subject with a hole (``check_floor``, called before and after
the replay, so a trim racing a take, by an owner that lost its lease meanwhile, is caught
too): the partition is not served, and the next take uses the newer object.
"""
from __future__ import annotations

import nats.js.errors as jserr
from nats.js import api

from engine.cluster.replog import WRONG_LAST_SEQ, ReplicationError, subject
from engine.cluster.snapstore import SnapshotObjects
from engine.snapshot import SnapshotCorruptError


def floor_subject(prefix: str, p: int) -> str:
    """In the stream's ``<prefix>.*`` but never a partition's subject (those are numbers)."""
    return f"{prefix}.trim{p}"


async def read_floor(log, p: int) -> tuple[int, int]:
    """(the floor, the stream sequence of its message): (0, 0) when p was never trimmed."""
    try:
        m = await log.js.get_msg(log.stream, subject=floor_subject(log.prefix, p))
    except jserr.NotFoundError:
        return 0, 0
    try:
        return int(bytes(m.data or b"").decode()), m.seq
    except ValueError:
        raise ReplicationError(f"stream={log.stream} subject={floor_subject(log.prefix, p)} "
                               f"seq={m.seq}: the trim floor is not a number") from None


async def check_floor(log, p: int, base_seq: int) -> None:
    """Raise unless the subject holds every message of p after ``base_seq`` (no trim above it)."""
    floor, _ = await read_floor(log, p)
    if floor > base_seq:
        raise ReplicationError(f"partition={p}: stream={log.stream} subject={subject(log.prefix, p)} "
                               f"is trimmed below seq {floor}, but this replay starts after seq "
                               f"{base_seq} (no valid snapshot object at or after the floor): not taken")


async def trim_below(snaps: SnapshotObjects, p: int, name: str, covered: int, say) -> str:
    """Steps 1-3 of the module doc for the object ``name`` covering ``covered``: "trimmed" (the
    subject now starts at ``covered``), "refused" (the object failed its read-back: nothing
    purged) or "current" (the floor is there already: nothing to do)."""
    log = snaps.log
    try:
        await snaps.verify(p, name, covered)
    except SnapshotCorruptError as e:
        say(f"risk-engine: cluster: partition {p}: snapshot object {name} failed its read-back, "
            f"stream not trimmed: {e}")
        return "refused"
    for _ in range(10):                       # bounded: another writer raising it meanwhile
        floor, at = await read_floor(log, p)
        if covered <= floor:
            return "current"
        try:
            await log.js.publish(floor_subject(log.prefix, p), str(covered).encode(), timeout=log.timeout_s,
                                 headers={api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(at)})
            break
        except jserr.APIError as e:
            if e.err_code not in WRONG_LAST_SEQ:
                raise
    else:
        raise ReplicationError(f"partition={p}: the trim floor kept changing (10 tries)")
    js = log.js
    await js.purge_stream(log.stream, seq=covered, subject=subject(log.prefix, p))
    await js.purge_stream(log.stream, subject=floor_subject(log.prefix, p), keep=1)
    return "trimmed"
