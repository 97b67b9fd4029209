"""Journal records replicated to JetStream on the module's 3-server cluster (R3): what is
published is replayed bit for bit in order; a fenced-off publisher is refused after a
takeover's fence; a tailer restarted mid-publish resumes with no duplicate and no gap; a NATS
server killed -9 while publishing does not stop it and catches up; a corrupted message is
reported by the reader."""
from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import nats
import numpy as np
import pytest

from engine.cluster.leases import LeaseStore, encode
from engine.cluster.ownership import OwnershipTable, now_ns
from engine.cluster.partition import partition_of_keys
from engine.cluster.replog import (H_COUNT, H_DONE, H_FIRST, H_KIND, H_LAST, H_NODE, H_REV,
                                   H_WRITER, ReplicationCorruptError, ReplicationError, ReplicationLog)
from engine.cluster.tailer import JournalTailer
from engine.journal import HEADER_SIZE, JournalConfig, JournalReader, JournalWriter
from shm.runtime.nats_auth import auth_options
from shm.schema import take_rows
from tests.cluster.agentproc import wait_for
from tests.cluster.tailerproc import SCHEMA, kill9, running
P = 8
RS = JournalReader(".", SCHEMA.dtype, SCHEMA.hash).dtype.itemsize
HOUR_NS = 3600 * 10**9


@pytest.fixture
def names():
    """A stream and subject prefix of its own per test, on the module's cluster."""
    h = uuid.uuid4().hex[:10]
    return f"RJ{h}", f"rj{h}"


def run(cluster, body, timeout_s=120):
    async def go():
        nc = await nats.connect(cluster.urls, **auth_options(cluster.credentials), connect_timeout=2, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
        try:
            return await body(nc.jetstream(timeout=5.0))
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(go(), timeout_s))


def rlog(js, names, node="a"):
    return ReplicationLog(js, node, SCHEMA.dtype, "account_id", P, stream=names[0], prefix=names[1])


def journal(d, w=0):
    return JournalWriter(str(d), SCHEMA.dtype, SCHEMA.hash, w,
                         JournalConfig(segment_bytes=HEADER_SIZE + 300 * RS, fsync="none"))


def write(jw, n, seed):
    b = jw.empty_batch(n)
    rng = np.random.default_rng(seed)
    b["event"]["account_id"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    b["event"]["amount"] = rng.random(n)
    b["arrival_ns"] = np.arange(n) + seed * 10**6
    b["score"] = rng.random(n)
    jw.append_batch(b)


def owning_all(rev=5):
    t = OwnershipTable(P)
    for p in range(P):
        t.begin(p, rev, now_ns() + HOUR_NS)
    return t


def journal_by_partition(d, writers, after=None):
    """{(partition, writer): record bytes in seq order} of the journal (seq > after[w])."""
    out = {}
    for w in writers:
        recs = JournalReader(str(d), SCHEMA.dtype, SCHEMA.hash, w).read_all()
        recs = take_rows(recs, recs["seq"] > (after or {}).get(w, 0))
        parts = partition_of_keys(recs["event"]["account_id"], P)
        for p in range(P):
            sel = take_rows(recs, parts == p)
            if len(sel):
                out[(p, w)] = sel.tobytes()
    return out


async def replayed(log):
    """{(partition, writer): record bytes in stream order} and the fences, from the stream."""
    out, fences = {}, []
    for p in range(P):
        async for m in log.replay(p):
            if m.kind == "fence":
                fences.append((p, m.node, m.rev))
            else:
                out[(p, m.writer)] = out.get((p, m.writer), b"") + m.records.tobytes()
    return out, fences


def test_published_records_are_replayed_bit_for_bit_in_order(nats3, names, tmp_path):
    w0, w1 = journal(tmp_path, 0), journal(tmp_path, 1)
    write(w0, 40, 1)                     # decided before the term: not this term's to publish
    ends = {0: 40, 1: 0}

    async def body(js):
        log = rlog(js, names)
        await log.ensure_stream(3)
        t = JournalTailer(log, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(), batch_records=100,
                          records_per_msg=32)
        await t.take_ownership()
        write(w0, 500, 2)                # 2 segments of 300: across a rotation
        write(w1, 350, 3)
        assert t.lag() == {0: 500, 1: 350}
        n = await t.drain()
        assert n == 850 == log.counters.published_records and t.lag() == {0: 0, 1: 0}
        assert log.counters.refused == 0
        got, fences = await replayed(log)
        assert sorted(fences) == [(p, "a", 5) for p in range(P)]
        whole = [m async for m in log.replay(2)]       # and from the middle: the suffix
        tail = [m async for m in log.replay(2, after_seq=whole[3].stream_seq)]
        assert [m.stream_seq for m in tail] == [m.stream_seq for m in whole[4:]]
        assert all(a.records.tobytes() == b.records.tobytes() for a, b in zip(tail, whole[4:]))
        assert [m async for m in log.replay(2, after_seq=whole[-1].stream_seq)] == []
        return got
    got = run(nats3, body)
    w0.close(), w1.close()
    want = journal_by_partition(tmp_path, [0, 1], after=ends)
    assert got.keys() == want.keys() and len(want) == 2 * P
    for k in want:
        assert got[k] == want[k], k      # bit for bit, in journal order


def test_a_fenced_off_publisher_is_refused_after_a_takeover(nats3, names, tmp_path):
    w0 = journal(tmp_path)
    write(w0, 64, 4)
    recs = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
    parts = partition_of_keys(recs["event"]["account_id"], P)
    p = int(np.bincount(parts).argmax())
    mine = take_rows(recs, parts == p)
    assert len(mine) >= 4

    async def body(js):
        leases = LeaseStore(js, "t" + names[1], timeout_s=5.0)
        await leases.open(P, replicas=3)
        a, b = rlog(js, names, "a"), rlog(js, names, "b")
        await a.ensure_stream(3)
        r1 = await leases.take(p, encode("a", "tcp://127.0.0.1:1"), 0)
        assert (await a.fence(p, r1, {0: 0})).done == {0: 0}
        assert await a.publish(p, r1, 0, mine[:2], {0: int(mine["seq"][1])})
        # b takes the lease over (compare-and-set on a's revision) and fences the subject
        r2 = await leases.take(p, encode("b", "tcp://127.0.0.1:2"), r1)
        assert r2 > r1
        fb = await b.fence(p, r2, {0: int(mine["seq"][-1])})
        assert fb is not None and fb.rev == r2
        # a, fenced off, still believes it owns p: its next publish is refused, counted, not retried
        assert await a.publish(p, r1, 0, mine[2:3], {0: int(mine["seq"][2])}) is None
        assert a.counters.refused == 1 and a.counters.lost == [(p, r1)] and p not in a.fenced
        with pytest.raises(ReplicationError, match="without a fence"):
            await a.publish(p, r1, 0, mine[3:4], {0: int(mine["seq"][3])})
        # and with its old token it cannot fence its way back in
        assert await a.fence(p, r1, {0: 0}) is None
        assert await b.publish(p, r2, 0, mine[3:4], {0: int(mine["seq"][3])})
        return [(m.kind, m.node, m.rev, None if m.records is None else m.records.tobytes())
                async for m in b.replay(p)]
    msgs = run(nats3, body)
    r1, r2 = msgs[0][2], msgs[2][2]
    assert msgs == [("fence", "a", r1, None), ("rec", "a", r1, mine[:2].tobytes()),
                    ("fence", "b", r2, None), ("rec", "b", r2, mine[3:4].tobytes())]


def test_a_restarted_tailer_resumes_with_no_duplicate_and_no_gap(nats3, names, tmp_path):
    w0, w1 = journal(tmp_path, 0), journal(tmp_path, 1)

    async def first(js):
        log = rlog(js, names)
        await log.ensure_stream(3)
        t = JournalTailer(log, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(5), batch_records=40,
                          records_per_msg=8)
        await t.take_ownership()
        write(w0, 400, 5)
        write(w1, 400, 6)
        task = asyncio.create_task(t.drain())
        for _ in range(600):             # crash it mid-drain: cancelled wherever it is
            if log.counters.published_records >= 150:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return log.counters.published_records
    before = run(nats3, first)
    assert 0 < before < 800
    write(w0, 100, 7)                    # decided while the tailer was down

    async def second(js):
        log = rlog(js, names)            # a new process: nothing in memory, the lease renewed
        t = JournalTailer(log, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(9), batch_records=40,
                          records_per_msg=8)
        n = await t.drain()
        got, fences = await replayed(log)
        return n, got, fences
    n, got, fences = run(nats3, second)
    w0.close(), w1.close()
    assert sorted(set(fences)) == sorted([(p, "a", 5) for p in range(P)] + [(p, "a", 9) for p in range(P)])
    want = journal_by_partition(tmp_path, [0, 1])
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k], k      # every record once, in order: no duplicate, no gap
    # a message cancelled after it was stored counts in neither (one per partition in flight)
    assert 900 - 8 * P <= before + n <= 900


def _stream_last_seq(server, stream):
    """The stream's last sequence in this server's own replica (its monitoring endpoint)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/jsz?streams=true", timeout=2) as r:
        jsz = json.load(r)
    for acc in jsz.get("account_details", []):
        for s in acc.get("stream_detail", []):
            if s["name"] == stream:
                return s["state"]["last_seq"]
    return None


def test_publishing_goes_on_through_a_killed_nats_server_and_it_catches_up(nats3, names, tmp_path):
    w0 = journal(tmp_path)

    async def body(js):
        log = rlog(js, names)
        await log.ensure_stream(3)
        t = JournalTailer(log, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(), batch_records=50,
                          records_per_msg=10)
        await t.take_ownership()
        write(w0, 300, 8)
        await t.drain()
        # kill -9 the stream's leader (a Raft election follows) during publishing
        leader = (await js.stream_info(names[0])).cluster.leader
        k = next(i for i, s in enumerate(nats3.servers) if s.name == leader)
        await asyncio.to_thread(nats3.kill, k)
        try:
            for i in range(6):
                write(w0, 100, 9 + i)
                await t.drain()
        finally:
            await asyncio.to_thread(nats3.restart, k)
        assert log.counters.refused == 0 and t.lag() == {0: 0}
        last = (await js.stream_info(names[0])).state.last_seq
        for _ in range(300):                         # the returned server catches up (bounded)
            if _stream_last_seq(nats3.servers[k], names[0]) == last:
                break
            await asyncio.sleep(0.2)
        assert _stream_last_seq(nats3.servers[k], names[0]) == last
        got, _ = await replayed(log)
        return got, log.counters
    got, counters = run(nats3, body, timeout_s=240)
    w0.close()
    assert counters.published_records == 900
    assert got == journal_by_partition(tmp_path, [0])


def test_a_corrupted_message_is_reported_by_the_reader(nats3, names, tmp_path):
    w0 = journal(tmp_path)
    write(w0, 64, 10)
    recs = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
    parts = partition_of_keys(recs["event"]["account_id"], P)
    w0.close()

    def hdr(sel, **kw):
        h = {H_KIND: "rec", H_REV: "5", H_NODE: "a", H_WRITER: "0", H_FIRST: str(int(sel["seq"][0])),
             H_LAST: str(int(sel["seq"][-1])), H_COUNT: str(len(sel)), H_DONE: ""}
        return {**h, **kw}

    async def body(js):
        log = rlog(js, names)
        await log.ensure_stream(3)
        subj = lambda p: f"{names[1]}.{p}"
        sel0 = take_rows(recs, parts == 0)
        flipped = bytearray(sel0.tobytes())
        flipped[20] ^= 0x04                  # one bit of the first record's arrival_ns
        await js.publish(subj(0), bytes(flipped), headers=hdr(sel0))
        sel1 = take_rows(recs, parts == 1)
        await js.publish(subj(1), sel0.tobytes(), headers=hdr(sel0))   # intact, wrong partition
        await js.publish(subj(2), sel1[:1].tobytes(), headers=hdr(sel1[:1], **{H_COUNT: "2"}))
        out = []
        for p in range(3):
            with pytest.raises(ReplicationCorruptError) as e:
                async for _ in log.replay(p):
                    pass
            out.append(str(e.value))
        return out
    errs = run(nats3, body)
    assert "check word mismatch" in errs[0] and f"subject={names[1]}.0 seq=" in errs[0]
    assert "belongs to partition 0" in errs[1]
    assert "count=2" in errs[2]


def test_a_tailer_fenced_off_by_a_takeover_stops_publishing_and_does_not_fence_back(nats3, names, tmp_path):
    """Node a's lease lapses: the records of its term still go out. Then b takes the lease
    and fences: a's next publish there is refused once, counted, and never retried; a does not
    fence back with its old revision; the stream holds a's term, then b's."""
    da, db = tmp_path / "a", tmp_path / "b"
    da.mkdir(), db.mkdir()
    ja, jb = journal(da), journal(db)
    p = 3

    def table(rev):
        t = OwnershipTable(P)
        t.begin(p, rev, now_ns() + HOUR_NS)
        return t

    async def body(js):
        leases = LeaseStore(js, "t" + names[1], timeout_s=5.0)
        await leases.open(P, replicas=3)
        la, lb = rlog(js, names, "a"), rlog(js, names, "b")
        await la.ensure_stream(3)
        r1 = await leases.take(p, encode("a", "tcp://127.0.0.1:1"), 0)
        ta = JournalTailer(la, da, SCHEMA.dtype, SCHEMA.hash, table(r1), records_per_msg=4)
        await ta.take_ownership()
        write(ja, 200, 20)
        a_first = await ta.drain()
        assert a_first > 0 and la.counters.refused == 0
        ta.table.clear(p)                    # a's lease lapses: its term's tail still goes out
        write(ja, 100, 24)
        tail = await ta.drain()
        assert tail > 0 and la.counters.refused == 0 and ta.lag() == {0: 0}
        a_first += tail
        r2 = await leases.take(p, encode("b", "tcp://127.0.0.1:2"), r1)
        tb = JournalTailer(lb, db, SCHEMA.dtype, SCHEMA.hash, table(r2), records_per_msg=4)
        await tb.take_ownership()
        write(jb, 200, 21)
        write(ja, 200, 22)                   # a, stale, goes on deciding p's events
        assert await tb.drain() > 0
        assert await ta.step() == 0 and la.counters.refused == 1 and la.counters.lost == [(p, r1)]
        write(ja, 100, 23)
        for _ in range(3):                   # not retried, no fence back with r1
            assert await ta.step() == 0
        assert la.counters.refused == 1 and la.counters.fences == 1
        got = [(m.kind, m.node, m.rev, m.records) async for m in lb.replay(p)]
        return a_first, got, r1, r2
    a_first, got, r1, r2 = run(nats3, body)
    ja.close(), jb.close()
    kinds = [(k, n, r) for k, n, r, _ in got]
    fence_b = kinds.index(("fence", "b", r2))
    assert kinds[0] == ("fence", "a", r1) and all(k[1] == "a" for k in kinds[:fence_b])
    assert all(k == ("rec", "b", r2) for k in kinds[fence_b + 1:])
    a_recs = b"".join(r.tobytes() for k, n, _, r in got[:fence_b] if k == "rec")
    b_recs = b"".join(r.tobytes() for k, n, _, r in got[fence_b + 1:])
    assert len(a_recs) // RS == a_first
    assert a_recs == journal_by_partition(da, [0])[(p, 0)][:len(a_recs)]
    assert b_recs == journal_by_partition(db, [0])[(p, 0)]


class _LoseAnswers:
    """The real JetStream context, except that the next ``lose`` publishes reach the stream
    and their answers are dropped (as when the connection or a server dies after the write)."""

    def __init__(self, js):
        self.js, self.lose = js, 0

    def __getattr__(self, name):
        return getattr(self.js, name)

    async def publish(self, *a, **kw):
        ack = await self.js.publish(*a, **kw)
        if self.lose:
            self.lose -= 1
            raise nats.errors.TimeoutError
        return ack


def test_a_publish_whose_answer_was_lost_is_retried_without_a_duplicate(nats3, names, tmp_path):
    w0 = journal(tmp_path)
    write(w0, 32, 30)
    recs = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
    w0.close()
    p = int(np.bincount(partition_of_keys(recs["event"]["account_id"], P)).argmax())
    mine = take_rows(recs, partition_of_keys(recs["event"]["account_id"], P) == p)

    async def body(js):
        lossy = _LoseAnswers(js)
        log = rlog(lossy, names)
        await log.ensure_stream(3)
        lossy.lose = 1
        f = await log.fence(p, 5, {0: 0})
        lossy.lose = 1
        s = await log.publish(p, 5, 0, mine, {0: int(mine["seq"][-1])})
        assert f is not None and s == f.stream_seq + 1
        assert log.counters.retried == 2 and log.counters.refused == 0
        return [(m.kind, None if m.records is None else m.records.tobytes()) async for m in log.replay(p)]
    assert run(nats3, body) == [("fence", None), ("rec", mine.tobytes())]


def test_a_partition_taken_back_after_a_refusal_starts_a_new_term_at_the_journal_end(nats3, names, tmp_path):
    """a is fenced off by b (its publish refused), then takes the lease back at a newer
    revision: its tailer fences again and publishes only what it journals from then on, never
    the records it made while fenced off (they were not decided in any term of the stream)."""
    da, db = tmp_path / "a", tmp_path / "b"
    da.mkdir(), db.mkdir()
    ja, jb = journal(da), journal(db)
    p = 5
    ta_table, tb_table = OwnershipTable(P), OwnershipTable(P)

    async def body(js):
        leases = LeaseStore(js, "t" + names[1], timeout_s=5.0)
        await leases.open(P, replicas=3)
        la, lb = rlog(js, names, "a"), rlog(js, names, "b")
        await la.ensure_stream(3)
        r1 = await leases.take(p, encode("a", "tcp://127.0.0.1:1"), 0)
        ta_table.begin(p, r1, now_ns() + HOUR_NS)
        ta = JournalTailer(la, da, SCHEMA.dtype, SCHEMA.hash, ta_table, records_per_msg=4)
        tb = JournalTailer(lb, db, SCHEMA.dtype, SCHEMA.hash, tb_table, records_per_msg=4)
        await ta.take_ownership()
        write(ja, 100, 40)
        assert await ta.drain() > 0
        r2 = await leases.take(p, encode("b", "tcp://127.0.0.1:2"), r1)
        tb_table.begin(p, r2, now_ns() + HOUR_NS)
        await tb.take_ownership()
        write(ja, 100, 41)                   # made while fenced off
        assert await ta.drain() == 0 and la.counters.refused == 1
        tb_table.clear(p)
        await leases.release(p, r2)          # b hands it back
        free = (await leases.read(p)).revision
        r3 = await leases.take(p, encode("a", "tcp://127.0.0.1:1"), free)
        ta_table.begin(p, r3, now_ns() + HOUR_NS)
        end_before = ta.journal_end()[0]
        await ta.take_ownership()            # fence before serving, as a node must
        write(ja, 100, 42)
        assert await ta.drain() > 0 and la.counters.fences == 2
        return [(m.kind, m.node, m.rev, m.records) async for m in la.replay(p)], r3, end_before
    got, r3, end_before = run(nats3, body)
    ja.close(), jb.close()
    i = [(k, n, r) for k, n, r, _ in got].index(("fence", "a", r3))
    assert got[i - 1][:2] == ("fence", "b")   # b published nothing: its fence is the last
    after = b"".join(r.tobytes() for k, _, _, r in got[i + 1:])
    want = journal_by_partition(da, [0], after={0: end_before})[(p, 0)]
    assert after == want                     # exactly the records journaled after the take


def test_a_tailer_process_killed_mid_publish_is_resumed_with_no_duplicate_and_no_gap(nats3, names, tmp_path):
    """kill -9 of a tailer process while records are being journaled and published (the kill
    lands between two messages or with one on the wire: either way); a new tailer on the same
    journal and node resumes from the stream: every record once, in order."""
    w0, w1 = journal(tmp_path, 0), journal(tmp_path, 1)
    out = tmp_path / "tailer.out"
    run(nats3, lambda js: rlog(js, names).ensure_stream(3))
    with running(out, nats3, names[0], names[1], tmp_path, P, 5) as proc:
        def published():
            words = out.read_text().split()
            return int(words[-1]) if len(words) > 2 and words[-2] == "published" else -1
        for i in range(10):
            write(w0, 60, 50 + i)
            write(w1, 60, 70 + i)
            if i == 5:                   # some published, more being journaled: kill -9
                wait_for(lambda: published() > 0 or proc.poll() is not None, 60, "records published")
                kill9(proc, out)

    async def resume(js):
        log = rlog(js, names)
        t = JournalTailer(log, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(7), batch_records=100)
        await t.drain()
        return await replayed(log)
    got, fences = run(nats3, resume)
    w0.close(), w1.close()
    assert sorted(set(fences)) == sorted([(p, "a", 5) for p in range(P)] + [(p, "a", 7) for p in range(P)])
    want = journal_by_partition(tmp_path, [0, 1])
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k], k
