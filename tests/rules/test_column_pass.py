"""The kernel's column pass (rules/kernel_columns.py) against the reference evaluator, bit
for bit: stateless rules evaluated for a block of events at a time, branch-free (vector
loop) or in their per-event form (the other loop), rules that fail (division by zero,
overflow) under both on_error modes, a ruleset over 64 rules (the bit-63 boundary of a
word) and batches that end inside, at and after a word of events and a column block;
batches below COLUMN_MIN_EVENTS take the per-event path (short-circuit, no column pass),
checked at and around the threshold; then a ruleset mixing stateless rules with
feature-reading ones, over event streams."""
from __future__ import annotations

import random

import numpy as np
import pytest

from shm.features.featureset import FeatureSet
from shm.features.spec import parse_specs
from shm.runtime.config import load_config
from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag
from rules import compile_ruleset
from rules.codegen import vector_ops
from rules.feature_model import FeatureModel, reference_stream
from rules.kernel_columns import COLUMN_BLOCK_EVENTS, COLUMN_MIN_EVENTS
from tests.rules.exprgen import random_event, to_record
from tests.rules.test_differential import _check_batch

T = COLUMN_MIN_EVENTS
BATCHES = (1, 2, T - 1, T, T + 1, 63, 64, 65, 1000)
# (template, vector loop expected): {c} is a constant drawn per rule
_VECTOR = ["i8f > {c}", "u16f in (0, 1, 255, {c})", "code == b'AB' or name != b'hello'",
           "f64f * 2.0 > f32f + {c}", "i32f % 7 == {m}", "i64f // 1000 > {c}", "flag and u8f >= {c}",
           "k > 100 and u64f < k", "between(f32f, -1.5, {c})", "abs(f64f) < {c}",
           "flag or i8f > {c}", "not flag or u8f > {c}"]
_VECTOR_FAILING = ["(i64f + {c}) > 0", "f64f / f32f > {c}", "-i64f > {c}"]
_PER_EVENT_FORM = ["f64f % f32f == 0", "i32f // i16f > {c}", "(u8f if flag else i8f) > {c}",
                   "i64f > 0 and i64f * 3 > {c}", "round(f64f) > {c}", "min(i8f, i16f) < {c}"]
_FAILING_AT = {62: "f64f / f32f > 0.5", 63: "(i64f + 100) > 0", 64: "i32f // i16f > 1",
               65: "f64f / f32f > 2.0", 79: "-i64f > 5"}
N_RULES = 80                       # two words; indexes 62 to 65 and 79 are rules that may fail
# one cold compile of each ruleset takes 20-50 s here: on_error=fire runs in make test-slow
ON_ERROR = ["skip", pytest.param("fire", marks=pytest.mark.slow)]


def _ruleset_text(seed: int) -> str:
    rng = random.Random(seed)
    pool = _VECTOR * 3 + _VECTOR_FAILING + _PER_EVENT_FORM
    lines = ["ruleset: columns", "version: 1", "rules:"]
    for k in range(N_RULES):
        when = _FAILING_AT.get(k) or rng.choice(pool).format(c=rng.randint(-50, 50), m=rng.randrange(7))
        lines.append(f"  - {{id: c{k}, when: \"{when}\", action: {rng.choice(['allow', 'review', 'block'])}, "
                     f"score: {rng.choice([0, 1, 2.5, 3])}, mode: {'shadow' if rng.random() < 0.15 else 'enforce'}}}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=ON_ERROR)
def column_ruleset(request, all_schema, kernel_cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("columns") / "columns.yaml"
    path.write_text(_ruleset_text(7))
    return compile_ruleset([str(path)], all_schema, thresholds={"review": 6, "block": 11},
                           on_error=request.param, cache_dir=kernel_cache)


def test_the_ruleset_exercises_both_column_loops(column_ruleset):
    """Guards the test itself: both loops and the per-word error rows are generated."""
    src = open(column_ruleset.module_path).read()
    vec = sum(vector_ops(c) for c in column_ruleset.conditions)
    assert 40 < vec < N_RULES and "_gather(events" in src and "_chunk" not in src
    assert "|= np.uint64(fw)" in src and "|= np.uint64(ew)" in src
    assert f"if n < {COLUMN_MIN_EVENTS}:" in src and "_single0(ev)" in src and "_single1(ev)" in src


@pytest.mark.parametrize("n", BATCHES)
def test_column_pass_matches_reference(column_ruleset, all_schema, n):
    rng = random.Random(1000 + n)
    arr = to_record([random_event(rng, all_schema) for _ in range(n)], all_schema)
    _check_batch(column_ruleset, arr, strided=n % 2 == 1)


def test_errors_overflow_and_high_bits_happen(column_ruleset, all_schema):
    """The batches above are worth checking: evaluation errors, fired lists over MAX_FIRED,
    and bits 63 and 64 occur in them (so a wrong word, bit or error row shows)."""
    rng = random.Random(1000 + 1000)
    arr = to_record([random_event(rng, all_schema) for _ in range(1000)], all_schema)
    out = column_ruleset.evaluate(arr)
    d = [column_ruleset.reference_decision(arr[i]) for i in range(len(arr))]
    assert (out["flags"] & DecisionFlag.EVAL_ERROR).any() and (out["flags"] & DecisionFlag.FIRED_OVERFLOW).any()
    for r in (62, 63, 64, 65, 79):
        assert any(r in x.errors for x in d) and any(r in x.fired and r not in x.errors for x in d), r
    assert COLUMN_BLOCK_EVENTS < 1000          # the 1000-event batch spans several blocks


@pytest.mark.parametrize("n", [COLUMN_MIN_EVENTS - 1, 1])
def test_small_batches_match_reference_through_errors_and_high_bits(column_ruleset, all_schema, n):
    """The events above (evaluation errors, fired lists over MAX_FIRED, bits 62 to 65 and 79)
    in batches small enough for the per-event path, bit for bit."""
    rng = random.Random(1000 + 1000)
    arr = to_record([random_event(rng, all_schema) for _ in range(1000)], all_schema)
    for lo in range(0, 1000 if n > 1 else 300, n):
        _check_batch(column_ruleset, arr[lo:lo + n], strided=lo % 2 == 0)


# --- stateless rules next to feature-reading ones ----------------------------------------
SCHEMA = load_config().schema
FEATURES = {"txn_count_1m": {"kind": "count", "key": "account_id", "window": "60s", "capacity": 256},
            "amount_sum_1h": {"kind": "sum", "of": "amount", "key": "card_id", "window": "1h",
                              "capacity": 256, "update": "unless_blocked"}}
SPECS = parse_specs(FEATURES, {}, {}, SCHEMA)
MIXED = """\
ruleset: mixed
version: 1
rules:
  - {id: ratio, when: "amount / price > 3", action: review, score: 4}
  - {id: velocity, when: "txn_count_1m > 2", action: block, score: 10}
  - {id: per_side, when: "qty // side > 2", action: review, score: 3}
  - {id: odd_ms, when: "ts_ms % 1000 == 7 or currency == b'XXX'", action: review, score: 6}
  - {id: spend, when: "amount_sum_1h > 200 and amount > 10", action: block, score: 5}
  - {id: big, when: "amount >= 90", action: block, score: 20}
  - {id: busy_big, when: "amount > 50 and txn_count_1m > 1", action: review, score: 7}
  - {id: cents, when: "amount % price == 0", action: allow, score: 1, mode: shadow}
"""


def _stream(rng: random.Random, n: int):
    ev = np.zeros(n, SCHEMA.dtype)
    arrival = np.zeros(n, np.int64)
    t = 1_000_000
    for i in range(n):
        t += rng.choice([0, 1, 500, 2000, 30_000, 61_000])
        arrival[i] = t * 1_000_000
        ev[i]["account_id"] = rng.randrange(1, 4)
        ev[i]["card_id"] = rng.randrange(10, 13)
        ev[i]["amount"] = float(rng.randrange(0, 100))
        ev[i]["price"] = float(rng.choice([0, 0, 1, 7, 20]))
        ev[i]["qty"] = rng.randrange(0, 20)
        ev[i]["side"] = rng.choice([0, 1, 2])
        ev[i]["ts_ms"] = rng.choice([7, 1007, 8, 0])
        ev[i]["currency"] = rng.choice([b"EUR", b"XXX"])
    return ev, arrival


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("mixed") / "mixed.yaml"
    p.write_text(MIXED)
    return str(p)


@pytest.mark.parametrize("on_error", ON_ERROR)
def test_stateless_and_feature_rules_match_reference_stream(mixed_file, kernel_cache, on_error):
    """Each stream in one call; then a 200-event stream in calls of ``step`` events (the
    tables carry state from call to call, through the per-event path and the column pass)."""
    rs = compile_ruleset([mixed_file], SCHEMA, thresholds={"review": 8, "block": 25}, on_error=on_error,
                         cache_dir=kernel_cache, features=FeatureSet(SPECS, SCHEMA))
    src = open(rs.module_path).read()
    assert "_chunk0(ev, i" in src and "_col0(cols, m)" in src and "_col1(cols, m)" in src
    assert f"if n < {COLUMN_MIN_EVENTS}:" in src and "_single0(ev)" in src
    runs = [(n, n, n) for n in BATCHES] + [(200, step, 1000 + step) for step in (1, T - 1, T, T + 1)]
    for n, step, seed in runs:
        fs, model = FeatureSet(SPECS, SCHEMA), FeatureModel(SPECS, SCHEMA, {})
        ev, arrival = _stream(random.Random(seed), n)
        out = np.zeros(n, RESPONSE_SLOT_DTYPE)
        bits = np.zeros((n, rs.n_words), np.uint64)
        hits, errors = np.zeros(rs.n_rules, np.int64), np.zeros(rs.n_rules, np.int64)
        for lo in range(0, n, step):
            hi = lo + step
            rs.kernel(ev[lo:hi], arrival[lo:hi], out[lo:hi], bits[lo:hi], hits, errors, *fs.arrays())
        want_errors = np.zeros(rs.n_rules, np.int64)
        for i, d in enumerate(reference_stream(rs, model, ev, arrival)):
            fired = {b for b in range(rs.n_rules) if int(bits[i, 0]) >> b & 1}
            assert (int(out[i]["action"]), float(out[i]["score"]), fired) == (d.action, d.score, set(d.fired)), (n, step, i)
            assert bool(out[i]["flags"] & DecisionFlag.EVAL_ERROR) == bool(d.errors), (n, step, i)
            for r in d.errors:
                want_errors[r] += 1
        assert (errors == want_errors).all(), (n, step)
        assert n < 64 or want_errors.any()


def test_cache_key_changes_with_the_column_pass_source(tmp_path):
    """Generated modules carry HELPERS_HASH (their cache key): a kernel compiled by an older
    column pass is not reused after kernel_columns.py changes."""
    import shutil
    from pathlib import Path

    import rules.kernel_source as ks
    for f in ks.HASHED_SOURCES:
        shutil.copy(Path(ks.__file__).parent / f, tmp_path / f)
    assert ks._helpers_hash(tmp_path) == ks.HELPERS_HASH
    with open(tmp_path / "kernel_columns.py", "a") as f:
        f.write("# changed\n")
    assert ks._helpers_hash(tmp_path) != ks.HELPERS_HASH
