"""A partition's feature state in real feature tables (engine.cluster.partstate) taken over
through the stream: node a applies and publishes its journal and writes snapshot objects the
way serve does (engine.cluster.takeover.write_snapshot: computed from the stream in scratch
tables), equal to its serving tables' rows; node b, whose tables hold stale rows of the
partition, takes each partition (fence, newest snapshot, replay): its rows then equal a
recount of the published events through the same update kernel, bit for bit, and it replayed
only what the snapshots did not cover. Every emptied row reads and updates as an absent key
(shm.features.rows)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from engine.cluster.ownership import OwnershipTable
from engine.cluster.partition import partition_of_keys
from engine.cluster.partstate import PartitionState, PartitionStateError
from engine.cluster.replicate import Replicator
from engine.cluster.snapstore import SnapshotObjects
from engine.cluster.tailer import JournalTailer
from engine.cluster.takeover import take_partition, write_snapshot
from engine.journal import JournalReader
from rules import compile_ruleset
from shm.features.featureset import FeatureSet
from shm.features.rows import used_keys
from shm.features.spec import parse_specs
from shm.journal_format import journal_dtype
from tests.cluster.tailerproc import SCHEMA
from tests.cluster.test_replication import P, journal, owning_all, rlog, run
from tests.cluster.test_takeover import fenced_publisher

CAP = 1024
FEATURES = {
    "n_1h": {"kind": "count", "key": "account_id", "window": "1h", "capacity": CAP},
    "sum_1h": {"kind": "sum", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "avg_1h": {"kind": "avg", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "min_1h": {"kind": "min", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "max_1h": {"kind": "max", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "seen_s": {"kind": "age", "key": "account_id", "capacity": CAP},
    "prev": {"kind": "last", "of": "amount", "key": "account_id", "capacity": CAP},
    "amounts_1h": {"kind": "distinct", "of": "account_id", "key": "account_id", "window": "1h", "capacity": CAP},
}
SPECS = parse_specs(FEATURES, {}, {}, SCHEMA)
RULES = """\
ruleset: partstate
version: 1
rules:
  - {id: busy, when: "n_1h > 5 and sum_1h > 1 and avg_1h > 0 and min_1h < max_1h", action: review, score: 1}
  - {id: fresh, when: "seen_s < 1000 and prev == prev and amounts_1h > 1", action: allow}
"""


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory):
    f = tmp_path_factory.mktemp("rules") / "partstate.yaml"
    f.write_text(RULES)
    return compile_ruleset([str(f)], SCHEMA, features=FeatureSet(SPECS, SCHEMA))


def write(jw, accounts, n, seed, t0_ms):
    """n records of accounts drawn from ``accounts`` (repeats: counts above 1)."""
    b = jw.empty_batch(n)
    rng = np.random.default_rng(seed)
    b["event"]["account_id"] = rng.choice(np.asarray(accounts, np.uint64), n)
    b["event"]["amount"] = np.round(rng.random(n) * 100, 2)
    b["arrival_ns"] = (t0_ms + np.arange(n) * 7) * 10**6
    jw.append_batch(b)


def node(ruleset):
    fs = FeatureSet(SPECS, SCHEMA)
    return fs, PartitionState(fs, lambda: ruleset, P)


def rows_by_key(arrays):
    return {name: {int(r[0]): r.tobytes() for r in a} for name, a in arrays.items()}


def test_a_taken_partition_in_the_feature_tables_equals_a_recount_of_the_published_events(
        nats3, names, tmp_path, ruleset):
    w0 = journal(tmp_path)
    write(w0, range(1000, 1040), 30, 1, 1_000)      # before a's term: never published
    fa, sa_state = node(ruleset)
    fb, sb_state = node(ruleset)
    reader = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0)
    # b's tables: rows of keys that no published event has (stale: a term of b's long ago)
    # and of the published ones, all of which the take-over must replace
    sb_state.apply(records([*range(60), *range(1000, 1040)], 500, 7))

    async def body(js):
        a, snaps_a, ta = await fenced_publisher(js, names, tmp_path)
        write(w0, range(40), 200, 2, 2_000)
        await ta.drain()
        recs = reader.read_all()
        sa_state.apply(recs[recs["seq"] > 30])       # a served what it published
        _, scratch = node(ruleset)
        for p in range(P):                           # as serve writes them: from the stream
            await write_snapshot(p, a.last[p], snaps_a, scratch, print)
            got = (await snaps_a.newest(p, a.last[p])).arrays
            assert rows_by_key(got) == rows_by_key(sa_state.export(p)), p
        write(w0, range(20, 60), 300, 3, 5_000)
        await ta.drain()
        for p in range(P // 2):                      # a second round, half the partitions:
            await write_snapshot(p, a.last[p], snaps_a, scratch, print)   # on the first ones

        b = rlog(js, names[:2], "b")
        snaps_b = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
        await snaps_b.open(3)
        tb = JournalTailer(b, tmp_path / "b", SCHEMA.dtype, SCHEMA.hash, owning_all(6))
        taken, lines = [], []
        for p in range(P):
            taken.append(await take_partition(p, 6, tb.fence, snaps_b, lambda arr, p=p: sb_state.restore(p, arr),
                                              sb_state.apply, lines.append))
        return taken, lines, snaps_b.counters

    taken, lines, c = run(nats3, body)
    assert c.restored == P and c.refused == 0 and not lines, lines
    recs = reader.read_all()
    parts = partition_of_keys(recs["event"]["account_id"], P)
    late = (recs["seq"] > 230) & (parts >= P // 2)       # not covered by a snapshot object
    assert sum(t.replayed_records for t in taken) == late.sum() > 0
    assert all(t.snapshot is not None for t in taken)
    fc, sc_state = node(ruleset)                    # the recount: every published record once
    sc_state.apply(recs[recs["seq"] > 30])
    for p in range(P):
        got, want = rows_by_key(sb_state.export(p)), rows_by_key(sc_state.export(p))
        assert got == want, p
    keys = used_keys(fb.array("ft_n_1h"), CAP, SPECS.features[0].slot_words)
    stale = set(keys[keys >= 1000].tolist())
    assert stale and not stale & {int(k) for p in range(P) for k in sb_state.export(p)["ft_n_1h"][:, 0]}


def test_rows_of_another_partition_or_layout_are_refused_before_anything_is_written(ruleset):
    fs, st = node(ruleset)
    st.apply(records(range(50), 400, 9))
    before = {p: rows_by_key(st.export(p)) for p in range(P)}
    other = st.export(1)
    with pytest.raises(PartitionStateError, match="partition=0 table=ft_n_1h: holds keys of other partitions"):
        st.restore(0, {**st.export(0), "ft_n_1h": other["ft_n_1h"]})
    with pytest.raises(PartitionStateError, match="not this node's feature tables"):
        st.restore(0, {"ft_n_1h": other["ft_n_1h"]})
    bad = {**st.export(0), "ft_sum_1h": st.export(0)["ft_sum_1h"][:, :3]}
    with pytest.raises(PartitionStateError, match="ft_sum_1h: rows uint64"):
        st.restore(0, bad)
    assert {p: rows_by_key(st.export(p)) for p in range(P)} == before


def records(accounts, n, seed):
    """Journal-shaped records of ``accounts``, without a journal."""
    b = np.zeros(n, journal_dtype(SCHEMA.dtype))
    rng = np.random.default_rng(seed)
    b["event"]["account_id"] = rng.choice(np.asarray(accounts, np.uint64), n)
    b["event"]["amount"] = rng.random(n) * 50
    b["arrival_ns"] = np.arange(n) * 10**7
    return b


async def wait(cond, timeout_s=60.0):
    for _ in range(int(timeout_s / 0.05)):                  # bounded
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s:g} s")


def test_serve_writes_snapshot_objects_and_a_taker_restores_from_them(nats3, tmp_path, ruleset):
    """Two Replicators as serve runs them (a publishing and writing snapshot objects every
    0.2 s; b taking every partition through its prepare hook): b replays nothing the objects
    cover, and its rows equal a recount of a's published records."""
    w0 = journal(tmp_path / "a")

    def cfg(node, d):
        return SimpleNamespace(cluster=SimpleNamespace(servers=tuple(nats3.urls), credentials=nats3.credentials, node=node, partitions=P),
                               schema=SCHEMA, durability=SimpleNamespace(journal_dir=str(d),
                                                                         snapshot_interval_s=0.2))

    def scratch():
        return node(ruleset)[1]

    _, state_b = node(ruleset)
    state_b.apply(records(range(40, 120), 300, 11))          # stale rows b must replace
    (tmp_path / "b").mkdir()
    a = Replicator(cfg("a", tmp_path / "a"), owning_all(5), print, 30, None, scratch)
    b = Replicator(cfg("b", tmp_path / "b"), OwnershipTable(P), print, 30, state_b, scratch)

    async def body(js):
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(r.run(stop)) for r in (a, b)]
        try:
            await wait(lambda: a.rlog is not None and len(a.rlog.fenced) == P)
            write(w0, range(80), 400, 5, 1_000)              # a's term: published
            await wait(lambda: a.rlog.counters.published_records == 400 and
                       all(a.snapped.get(p) == a.rlog.last[p] for p in range(P)))
            for p in range(P):
                assert await b.prepare(p, 6)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return b.snaps.counters

    c = run(nats3, body)
    assert b.taken == P and b.replayed_records == 0 and c.restored == P and c.full_replays == 0, c
    recs = JournalReader(str(tmp_path / "a"), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
    _, recount = node(ruleset)
    recount.apply(recs)
    for p in range(P):
        assert rows_by_key(state_b.export(p)) == rows_by_key(recount.export(p)), p
