"""A partition's feature state in real feature tables (engine.cluster.partstate) taken over
through the stream: node a applies and publishes its journal and writes snapshot objects of
its tables' rows; node b, whose tables hold stale rows of the partition and rows of others,
takes each partition (fence, snapshot, replay): its rows of the partition then equal a recount
of the published events through the same update kernel, bit for bit, and its other rows are
untouched. Every emptied row reads and updates as an absent key (shm.features.rows)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.cluster.partstate import PartitionState, PartitionStateError
from engine.cluster.snapstore import SnapshotObjects
from engine.cluster.tailer import JournalTailer
from engine.cluster.takeover import take_partition
from engine.journal import JournalReader
from rules import compile_ruleset
from shm.features.featureset import FeatureSet
from shm.features.rows import used_keys
from shm.features.spec import parse_specs
from shm.journal_format import journal_dtype
from tests.cluster.tailerproc import SCHEMA
from tests.cluster.test_replication import P, journal, owning_all, rlog, run
from tests.cluster.test_takeover import names  # noqa: F401  (fixture)

CAP = 1024
FEATURES = {
    "n_1h": {"kind": "count", "key": "account_id", "window": "1h", "capacity": CAP},
    "sum_1h": {"kind": "sum", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "avg_1h": {"kind": "avg", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "min_1h": {"kind": "min", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "max_1h": {"kind": "max", "of": "amount", "key": "account_id", "window": "1h", "capacity": CAP},
    "seen_s": {"kind": "age", "key": "account_id", "capacity": CAP},
    "prev": {"kind": "last", "of": "amount", "key": "account_id", "capacity": CAP},
}
SPECS = parse_specs(FEATURES, {}, {}, SCHEMA)
RULES = """\
ruleset: partstate
version: 1
rules:
  - {id: busy, when: "n_1h > 5 and sum_1h > 1 and avg_1h > 0 and min_1h < max_1h", action: review, score: 1}
  - {id: fresh, when: "seen_s < 1000 and prev == prev", action: allow}
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
        a = rlog(js, names[:2], "a")
        await a.ensure_stream(3)
        snaps_a = SnapshotObjects(js, a, SCHEMA.hash, bucket=names[2])
        await snaps_a.open(3)
        ta = JournalTailer(a, tmp_path, SCHEMA.dtype, SCHEMA.hash, owning_all(5), batch_records=64,
                           records_per_msg=16)
        await ta.take_ownership()
        write(w0, range(40), 200, 2, 2_000)
        await ta.drain()
        recs = reader.read_all()
        sa_state.apply(recs[recs["seq"] > 30])       # a served what it published
        for p in range(P):
            await snaps_a.put(p, a.last[p], sa_state.export(p))
        write(w0, range(20, 60), 300, 3, 5_000)
        await ta.drain()

        b = rlog(js, names[:2], "b")
        snaps_b = SnapshotObjects(js, b, SCHEMA.hash, bucket=names[2])
        await snaps_b.open(3)
        tb = JournalTailer(b, tmp_path / "b", SCHEMA.dtype, SCHEMA.hash, owning_all(6))
        taken, lines = [], []
        for p in range(P):
            taken.append(await take_partition(p, 6, tb.fence, snaps_b, lambda arr, p=p: sb_state.restore(p, arr),
                                              sb_state.apply, lines.append))
        return taken, lines, snaps_b.counters

    taken, lines, c = run(nats3.urls, body)
    assert c.restored == P and c.refused == 0 and not lines, lines
    assert sum(t.replayed_records for t in taken) == 300        # the rest came from snapshots
    recs = reader.read_all()
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
