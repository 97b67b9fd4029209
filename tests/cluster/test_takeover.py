"""Taking a partition over (engine.cluster.takeover) on the module's 3-server cluster: the state
restored from the newest snapshot object plus the stream's records after it equals a
brute-force recount of every published event; a corrupt or mismatched snapshot object is
reported and not used (an older one, or the whole subject, instead)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time

import nats

import pytest
from nats.js import api

from engine.cluster.agent import LeaseAgent
from engine.cluster.agentthread import AgentThread
from engine.cluster.ownership import OwnershipTable, now_ns
from engine.cluster.partition import partition_of
from engine.cluster.snapstore import SnapshotObjects, object_name
from engine.cluster.tailer import JournalTailer
from engine.cluster.takeover import take_partition
from engine.journal import JournalReader
from shm.runtime.nats_auth import auth_options
from tests.cluster.agentproc import wait_for
from tests.cluster.tailerproc import SCHEMA, State, kill9, published_state, running
from tests.cluster.test_replication import P, journal, owning_all, rlog, run, write


def start_agent(nats3, bucket, node, prepare, events, ended, ttl_s=1.0):
    """A lease agent on a thread over P partitions, TTL ``ttl_s``, with the take-over hooks."""
    agent = LeaseAgent(nats3.urls, node, "tcp://127.0.0.1:1", P, ttl_s, bucket=bucket, credentials=nats3.credentials,
                       on_event=events.append, table=OwnershipTable(P), prepare=prepare,
                       on_end=ended.append)
    return agent, AgentThread(agent).start()


async def fenced_publisher(js, names, d):
    """Node a's replication log, snapshot bucket and tailer over journal dir ``d``, owning every
    partition at revision 5, fenced."""
    a = rlog(js, names[:2], "a")
    await a.ensure_stream(3)
    sa = SnapshotObjects(js, a, SCHEMA.hash, bucket=names[2])
    await sa.open(3)
    ta = JournalTailer(a, d, SCHEMA.dtype, SCHEMA.hash, owning_all(5), batch_records=64, records_per_msg=16)
    await ta.take_ownership()
    return a, sa, ta


def recount(d, p, after_seq, upto_seq):
    """Brute force, one journal record at a time: {account: (count, sum arrival_ns)} of
    partition p's records with after_seq < seq <= upto_seq (writer 0)."""
    out = {}
    for r in JournalReader(str(d), SCHEMA.dtype, SCHEMA.hash, 0).read_all():
        k = int(r["event"]["account_id"])
        if after_seq < int(r["seq"]) <= upto_seq and partition_of({"account_id": k}, "account_id", P) == p:
            c, s = out.get(k, (0, 0))
            out[k] = (c + 1, s + int(r["arrival_ns"]))
    return out


def test_a_taken_partition_equals_a_recount_of_every_published_event(nats3, names, tmp_path):
    w0 = journal(tmp_path)
    write(w0, 30, 1)                        # before a's term: never published, never counted

    async def body(js):
        a, sa, ta = await fenced_publisher(js, names, tmp_path)
        write(w0, 200, 2)
        await ta.drain()
        for p in range(P):                  # a snapshots what it published so far
            st = await published_state(a, p, a.last[p])
            await sa.put(p, a.last[p], st.arrays())
        write(w0, 300, 3)
        await ta.drain()

        b = rlog(js, names[:2], "b")
        sb = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
        await sb.open(3)
        tb = JournalTailer(b, tmp_path / "b", SCHEMA.dtype, SCHEMA.hash, owning_all(6))
        lines, taken, states = [], [], {}
        for p in range(P):
            states[p] = State()
            taken.append(await take_partition(p, 6, tb.fence, sb, states[p].restore,
                                              states[p].apply, lines.append))
        write(w0, 100, 4)                   # a's records after b's fences: refused
        assert await ta.drain() == 0
        assert a.counters.refused == P and not a.fenced
        return taken, states, lines, sb.counters

    taken, states, lines, c = run(nats3, body)
    assert c.restored == P and c.refused == 0 and c.full_replays == 0 and not lines
    assert all(t.snapshot is not None and t.snapshot_seq > 0 for t in taken)
    assert sum(t.replayed_records for t in taken) == 300     # only what came after the snapshots
    for p in range(P):                      # journal seqs 31..530: a's term, all published
        assert states[p].f == recount(tmp_path, p, 30, 530), p


def test_a_corrupt_or_mismatched_snapshot_object_is_reported_and_not_used(nats3, names, tmp_path):
    w0 = journal(tmp_path)
    p = 3

    async def body(js):
        a = rlog(js, names[:2], "a")
        await a.ensure_stream(3)
        sa = SnapshotObjects(js, a, SCHEMA.hash, bucket=names[2], keep=10)
        await sa.open(3)
        ta = JournalTailer(a, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(5), records_per_msg=8)
        await ta.take_ownership()
        seqs = []
        for seed in (1, 2, 3, 4):
            write(w0, 60, seed)
            await ta.drain()
            seqs.append(a.last[p])
            await sa.put(p, a.last[p], (await published_state(a, p, a.last[p])).arrays())
        good, flipped, wrong_rev, other_part = seqs
        store = sa.store
        # flipped: a bit of the payload flipped, the description (sha256) kept
        res = await store.get(object_name(p, flipped))
        data = bytearray(res.data)
        data[len(data) // 2] ^= 0x10
        await store.put(object_name(p, flipped), bytes(data), meta=api.ObjectMeta(
            name=object_name(p, flipped), description=res.info.description))
        # wrong_rev: a snapshot whose covered message is not the stream's (another stream's)
        res = await store.get(object_name(p, wrong_rev))
        await store.put(object_name(p, wrong_rev), res.data, meta=api.ObjectMeta(
            name=object_name(p, wrong_rev), description=res.info.description.replace('"rev":5', '"rev":4')))
        # other_part: partition 4's state stored under partition 3's newest name
        res = await store.get(object_name(p, other_part))
        st4 = await published_state(a, 4, a.last[4])
        await sa.put(4, a.last[4], st4.arrays())
        res4 = await store.get(object_name(4, a.last[4]))
        d = json.loads(res.info.description)
        d.update(size=len(res4.data), sha256=hashlib.sha256(res4.data).hexdigest())
        await store.put(object_name(p, other_part), res4.data, meta=api.ObjectMeta(
            name=object_name(p, other_part), description=json.dumps(d)))

        b = rlog(js, names[:2], "b")
        sb = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
        await sb.open(3)
        tb = JournalTailer(b, tmp_path / "b", SCHEMA.dtype, SCHEMA.hash, owning_all(6))
        st, lines = State(), []
        t = await take_partition(p, 6, tb.fence, sb, st.restore, st.apply, lines.append)
        # then with every snapshot object of p corrupt: the whole subject is replayed
        await store.delete(object_name(p, good))
        await store.put(object_name(p, good), b"not a snapshot", meta=api.ObjectMeta(
            name=object_name(p, good), description="{}"))
        sc = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
        await sc.open(3)
        st2, lines2 = State(), []
        t2 = await take_partition(p, 6, tb.fence, sc, st2.restore, st2.apply, lines2.append)
        return t, st, lines, sb.counters, good, t2, st2, lines2, sc.counters

    t, st, lines, c, good, t2, st2, lines2, c2 = run(nats3, body)
    assert t.snapshot == object_name(p, good) and c.restored == 1 and c.refused == 3
    text = "\n".join(lines)
    assert "SHA-256" in text and "another stream's snapshot" in text and "names partition 4" in text, text
    assert st.f == recount(tmp_path, p, 0, 240)
    assert t2.snapshot is None and c2.full_replays == 1 and c2.refused == 4
    assert any("no usable snapshot" in ln for ln in lines2), lines2
    assert st2.f == recount(tmp_path, p, 0, 240)


def test_a_partition_is_not_served_before_its_replay_finished(nats3, names, bucket, tmp_path):
    """A lease agent whose prepare hook is the take-over: while the replay is held back (its
    fence done, more than a TTL), the leases are held and renewed but the table serves none;
    a partition appears in the table only with its state complete; stopping calls on_end for
    every partition released."""
    w0 = journal(tmp_path)

    async def publish(js):
        a = rlog(js, names[:2], "a")
        await a.ensure_stream(3)
        ta = JournalTailer(a, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(1), records_per_msg=16)
        await ta.take_ownership()
        write(w0, 200, 1)
        assert await ta.drain() == 200
    run(nats3, publish)

    gate, events, finished, states, lines, ended = threading.Event(), [], {}, {}, [], []
    ctx = {}

    async def prepare(p, rev):
        if "tb" not in ctx:                   # the agent's loop: a connection of its own
            ctx["nc"] = nc = await nats.connect(nats3.urls, **auth_options(nats3.credentials), connect_timeout=2)
            js = nc.jetstream(timeout=5.0)
            b = rlog(js, names[:2], "b")
            ctx["snaps"] = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
            await ctx["snaps"].open(3)
            ctx["tb"] = JournalTailer(b, tmp_path / "b", SCHEMA.dtype, SCHEMA.hash, OwnershipTable(P))

        async def fence_then_wait(p, rev):
            seq = await ctx["tb"].fence(p, rev)
            await asyncio.to_thread(gate.wait, 30)
            return seq
        states[p] = State()
        t = await take_partition(p, rev, fence_then_wait, ctx["snaps"], states[p].restore,
                                 states[p].apply, lines.append)
        finished[p] = t
        return t is not None

    # TTL 3 s: a lease renewed late on a loaded machine and lost would call on_end twice
    agent, th = start_agent(nats3, bucket, "b", prepare, events, ended, ttl_s=3.0)
    table = agent.table
    try:
        deadline = time.monotonic() + 30
        while len(agent.held) < P or time.monotonic() < deadline - 26.5:   # and past a TTL
            assert not table.owned() and not finished     # held (renewed), never servable
            assert time.monotonic() < deadline, events[-3:]
            time.sleep(0.01)
        assert len(agent.held) == P and not table.owned() and not finished
        assert not any(e["ev"] == "lost" for e in events), events
        gate.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(table.owned()) < P:
            for p in table.owned():           # servable only with its replay finished
                assert p in finished, p
            time.sleep(0.01)
        assert sorted(table.owned()) == list(range(P)), events[-5:]
        for p in range(P):
            assert states[p].f == recount(tmp_path, p, 0, 200), p
        assert sum(t.replayed_records for t in finished.values()) == 200
        assert sum(1 for ln in lines if "no usable snapshot" in ln) == P
    finally:
        if "nc" in ctx:
            asyncio.run_coroutine_threadsafe(ctx["nc"].close(), th._loop).result(10)
        assert th.stop(10)
    # released on stop: the tailer's end_term hook, once per term: a take whose lease was not
    # renewed while its replay ran (a loaded machine) ends once more, and is named by an event
    failed = [e["p"] for e in events if e["ev"] in ("prepare_failed", "lost")]
    assert sorted(ended) == sorted([*range(P), *failed]), (ended, [e for e in events if e["ev"] != "renewed"])


@pytest.mark.slow
def test_a_killed_owners_partitions_taken_over_equal_a_recount_of_what_it_published(nats3, names, tmp_path):
    """kill -9 of a tailer process (tests/cluster/tailerproc.py) that publishes and writes
    snapshot objects: whatever it had published, and whichever snapshot write the kill cut
    short, the taker's state equals a recount of the journal records the stream holds
    (bounded by the old owner's last Rj-Done), each once."""
    w0 = journal(tmp_path)
    out = tmp_path / "tailer.out"

    async def setup(js):
        await rlog(js, names[:2]).ensure_stream(3)
        await SnapshotObjects(js, rlog(js, names[:2]), SCHEMA.hash, bucket=names[2]).open(3)
    run(nats3, setup)
    with running(out, nats3, names[0], names[1], tmp_path, P, 5, ("--snapshots", names[2])) as proc:
        for i in range(12):
            write(w0, 50, 100 + i)
            time.sleep(0.05)
            if i == 8:                       # some snapshots written, more records coming: kill -9
                wait_for(lambda: "snapshot" in out.read_text() or proc.poll() is not None, 60,
                         "a snapshot round")
                kill9(proc, out)

    async def take(js):
        b = rlog(js, names[:2], "b")
        done = {p: (await b.last_message(p)).done.get(0, 0) for p in range(P)}   # a's last word
        sb = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
        await sb.open(3)
        tb = JournalTailer(b, tmp_path / "b", SCHEMA.dtype, SCHEMA.hash, owning_all(6))
        states, taken, lines = {}, {}, []
        for p in range(P):
            states[p] = State()
            taken[p] = await take_partition(p, 6, tb.fence, sb, states[p].restore, states[p].apply,
                                            lines.append)
        return done, states, taken, lines, sb.counters
    done, states, taken, lines, c = run(nats3, take)
    w0.close()
    assert c.restored + c.full_replays == P and c.refused == 0, lines
    assert c.restored >= 1                   # at least one round of snapshots was complete
    for p in range(P):
        assert states[p].f == recount(tmp_path, p, 0, done[p]), p
    print(f"killed owner: {sum(sum(n for n, _ in st.f.values()) for st in states.values())} records "
          f"published over {P} partitions, {c.restored} taken from a snapshot, {c.full_replays} by "
          f"a full replay")


def test_a_released_partition_stops_publishing_and_a_retake_starts_a_new_term(nats3, names, tmp_path):
    """end_term (the lease agent's hook on a release or loss): the partition's records journaled
    until then go out, none journaled after; the other partitions go on; taking it again
    fences a new term at the journal's end, so what was journaled in between is never
    published."""
    w0 = journal(tmp_path)
    p = 2

    async def body(js):
        a = rlog(js, names[:2], "a")
        await a.ensure_stream(3)
        t = JournalTailer(a, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(5), batch_records=50,
                          records_per_msg=8)
        await t.take_ownership()
        write(w0, 100, 1)                    # journaled in the term, unpublished at the end
        t.table.clear(p)                     # the agent clears the table, then calls end_term
        t.end_term(p)
        write(w0, 100, 2)                    # after the release: not p's to publish
        await t.drain()
        assert p not in a.fenced and p in t.ended
        got_after_end = [m async for m in a.replay(p)]
        write(w0, 50, 3)
        await t.drain()                      # p not owned in the tailer's eyes: nothing of it
        assert [m.stream_seq for m in await _all_msgs(a, p)] == [m.stream_seq for m in got_after_end]
        f = await t.fence(p, 9)              # taken again (prepare), then the table shows it
        t.table.begin(p, 9, now_ns() + 3600 * 10**9)
        write(w0, 50, 4)
        await t.drain()
        return got_after_end, await _all_msgs(a, p), f, {q: await _all_msgs(a, q) for q in range(P)}

    before, after, f, every = run(nats3, body)
    w0.close()
    seqs = lambda ms: [int(s) for m in ms if m.kind == "rec" for s in m.records["seq"]]   # noqa: E731
    want = lambda lo, hi: sorted(k for k in _journal_seqs(tmp_path, p) if lo < k <= hi)   # noqa: E731
    assert seqs(before) == want(0, 100)
    assert seqs(after) == want(0, 100) + want(250, 300)      # 101..250 never published
    assert f is not None and [m.kind for m in after].count("fence") == 2
    for q in range(P):                       # the others: every record once
        if q != p:
            assert seqs(every[q]) == sorted(_journal_seqs(tmp_path, q)), q


async def _all_msgs(log, p):
    return [m async for m in log.replay(p)]


def _journal_seqs(d, p):
    out = []
    for r in JournalReader(str(d), SCHEMA.dtype, SCHEMA.hash, 0).read_all():
        if partition_of({"account_id": int(r["event"]["account_id"])}, "account_id", P) == p:
            out.append(int(r["seq"]))
    return out


def test_a_failed_take_is_never_served_and_its_lease_is_released(nats3, bucket):
    """prepare raising (a corrupt stream, NATS down) or refusing: the partition never appears
    in the table, the lease is released (prepare_failed), on_end is called; the others serve."""
    events, ended = [], []

    async def prepare(p, rev):
        if p == 0:
            raise RuntimeError("replay failed")
        return p != 1

    agent, th = start_agent(nats3, bucket, "c", prepare, events, ended)
    table = agent.table
    try:
        deadline = time.monotonic() + 30
        while len(table.owned()) < P - 2 or not {0, 1} <= {e["p"] for e in events if e["ev"] == "prepare_failed"}:
            assert 0 not in table.owned() and 1 not in table.owned()
            assert time.monotonic() < deadline, events[-5:]
            time.sleep(0.01)
        failed = [e for e in events if e["ev"] == "prepare_failed"]
        assert any(e["p"] == 0 and "replay failed" in e["error"] for e in failed), failed
        assert {0, 1} <= set(ended)
        assert sorted(table.owned()) == list(range(2, P))
    finally:
        assert th.stop(10)
