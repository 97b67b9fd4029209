"""Trimming a partition's subject below its newest verified snapshot object
(engine.cluster.trim) on the module's 3-server cluster: after the trim the subject starts at
the object's covered sequence, a take-over (newest object + replay after it) still equals a
recount of every published event, a take that would replay across the hole fails instead of
serving a wrong state, and an object that fails its read-back allows no trim at all."""
from __future__ import annotations

import pytest
from nats.js import api

from engine.cluster.replog import ReplicationError, subject
from engine.cluster.snapstore import SnapshotObjects, object_name
from engine.cluster.tailer import JournalTailer
from engine.cluster.takeover import take_partition
from engine.cluster.trim import read_floor, trim_below
from tests.cluster.tailerproc import SCHEMA, State, published_state
from tests.cluster.test_replication import P, journal, owning_all, rlog, run, write
from tests.cluster.test_takeover import fenced_publisher, recount


async def subject_span(log, p) -> tuple[int, int]:
    """(stream seq of the subject's first message, messages on the subject)."""
    first = await log.js.get_msg(log.stream, seq=1, next=True, subject=subject(log.prefix, p))
    info = await log.js.stream_info(log.stream, subjects_filter=subject(log.prefix, p))
    return first.seq, (info.state.subjects or {}).get(subject(log.prefix, p), 0)


async def taker(js, names, d, node="b"):
    b = rlog(js, names[:2], node)
    sb = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
    await sb.open(3)
    return sb, JournalTailer(b, d, SCHEMA.dtype, SCHEMA.hash, owning_all(6))


def test_a_take_over_after_trimming_equals_a_recount_and_a_replay_across_the_hole_is_refused(
        nats3, names, tmp_path):
    w0 = journal(tmp_path)
    write(w0, 30, 1)                        # before a's term: never published

    async def body(js):
        a, sa, ta = await fenced_publisher(js, names, tmp_path)
        write(w0, 200, 2)
        await ta.drain()
        spans, lines, covered = {}, [], {}
        for p in range(P):
            before = await subject_span(a, p)
            covered[p] = a.last[p]
            name = await sa.put(p, covered[p], (await published_state(a, p, covered[p])).arrays())
            assert await trim_below(sa, p, name, covered[p], lines.append) == "trimmed", lines
            spans[p] = before, await subject_span(a, p), await read_floor(a, p)
            assert await trim_below(sa, p, name, covered[p], lines.append) == "current"
        write(w0, 300, 3)
        await ta.drain()
        (tmp_path / "b").mkdir()
        sb, tb = await taker(js, names, tmp_path / "b")
        taken, states = [], {}
        for p in range(P):
            states[p] = State()
            taken.append(await take_partition(p, 6, tb.fence, sb, states[p].restore, states[p].apply,
                                              lines.append))
        # partition 0 with no snapshot object left: a full replay would miss the trimmed part
        for _, name in await sb.names(0):
            await sb.store.delete(name)
        with pytest.raises(ReplicationError, match="trimmed below seq"):
            await take_partition(0, 7, tb.fence, sb, State().restore, State().apply, lines.append)
        return spans, covered, taken, states

    spans, covered, taken, states = run(nats3, body)
    for p, ((first0, n0), (first1, n1), (floor, _)) in spans.items():
        assert first0 < covered[p] and n0 > 1, (p, spans[p])
        assert (first1, n1) == (covered[p], 1) and floor == covered[p], (p, spans[p])
    assert all(t.snapshot_seq == covered[t.partition] for t in taken)
    assert sum(t.replayed_records for t in taken) == 300
    for p in range(P):                      # journal seqs 31..530, all published once
        assert states[p].f == recount(tmp_path, p, 30, 530), p


def test_a_corrupt_newest_snapshot_object_allows_no_trim(nats3, names, tmp_path):
    w0 = journal(tmp_path)
    p = 5

    async def body(js):
        a, sa, ta = await fenced_publisher(js, names, tmp_path)
        write(w0, 120, 4)
        await ta.drain()
        old = a.last[p]
        await sa.put(p, old, (await published_state(a, p, old)).arrays())
        write(w0, 120, 5)
        await ta.drain()
        new = a.last[p]
        name = await sa.put(p, new, (await published_state(a, p, new)).arrays())
        res = await sa.store.get(name)      # a bit of the payload flipped, the description kept
        data = bytearray(res.data)
        data[len(data) // 2] ^= 0x10
        await sa.store.put(name, bytes(data), meta=api.ObjectMeta(name=name, description=res.info.description))
        before, lines = await subject_span(a, p), []
        got = await trim_below(sa, p, name, new, lines.append)
        after, floor = await subject_span(a, p), await read_floor(a, p)
        (tmp_path / "b").mkdir()
        sb, tb = await taker(js, names, tmp_path / "b")
        st = State()
        t = await take_partition(p, 6, tb.fence, sb, st.restore, st.apply, lines.append)
        return got, before, after, floor, lines, t, st, old, object_name(p, old)

    got, before, after, floor, lines, t, st, old, old_name = run(nats3, body)
    assert got == "refused" and any("stream not trimmed" in ln for ln in lines), lines
    assert after == before and floor == (0, 0)
    assert t.snapshot == old_name and t.snapshot_seq == old      # the older object, then replay
    assert st.f == recount(tmp_path, p, 0, 240)
