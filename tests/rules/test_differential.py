"""Differential tests: kernel == reference evaluator == Python's own eval.

The reference is checked against Python on random expressions without compiling (cheap,
many examples). The kernel is checked against the reference with ONE compiled kernel
holding many random rules, fed random batches (special values of every type included).
Python's eval is the judge where it defines a result: if Python raises, the rule must
be an evaluation error; if both produce a value, the values are equal. (The reference
may also fail where Python returns a big int or a complex number: documented limits.)
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag, MAX_FIRED
from rules import compile_ruleset
from rules import ir
from rules.compiler import compile_expr
from rules.fold import FoldError, fold
from rules.parse import ExprError, allowlist, check_depth, parse_expr
from rules.typecheck import Checker
from rules.loader import ConstantDef
from rules.reference import EvalError, evaluate, event_env
from rules.symbols import Symbols
from tests.rules.exprgen import (CONSTANTS, CONSTANTS_YAML, gen_bool, gen_exact, gen_exact_bool,
                                 gen_num, python_value, random_event, to_record)


def _arr(events):
    """The arrival_ns argument of the kernel (unused without features)."""
    return np.zeros(len(events), np.int64)


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _symbols(schema) -> Symbols:
    return Symbols(schema, {k: ConstantDef(k, v, 1, 1) for k, v in CONSTANTS.items()})


def _ref(node, env):
    try:
        return ("ok", evaluate(node, env))
    except EvalError:
        return ("raise", None)


def _same(ref, py) -> bool:
    """Python defines a value -> equal values; Python raises -> the reference raises."""
    if py[0] == "raise" or isinstance(py[1], complex):
        return ref[0] == "raise"
    if ref[0] == "raise":
        return True                       # documented: int64 range, negative int exponent
    a, b = ref[1], py[1]
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    return a == b and type(a) is type(b) or (type(a), type(b)) in ((int, bool), (bool, int)) and a == b


def _compile_value(text, schema):
    """Like compile_expr, but the value of a numeric expression (no truth test on top)."""
    tree = parse_expr(text)
    check_depth(tree)
    assert not allowlist(tree)
    c = Checker(_symbols(schema))
    node = c.visit(tree)
    assert not c.errors, (text, [e.message for e in c.errors])
    try:
        return fold(node), []
    except FoldError as e:
        return None, [ExprError(1, 0, e.message)]


def _compile_or_skip(text, schema, value=False):
    node, errs = (_compile_value if value else compile_expr)(text, _symbols(schema) if not value else schema)
    if errs and all(e.message.startswith("expression always fails") for e in errs):
        return None                       # a constant subexpression that always fails
    assert not errs, (text, [(e.lineno, e.col, e.message) for e in errs])
    return node


@settings(max_examples=300, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_reference_matches_python_conditions(all_schema, seed):
    rng = random.Random(seed)
    rule, py = gen_bool(rng, rng.randint(1, 4))
    node = _compile_or_skip(rule, all_schema)
    assume(node is not None)
    for _ in range(4):
        env = event_env(to_record([random_event(rng, all_schema)], all_schema)[0], all_schema)
        ref = _ref(node, env)
        pyv = python_value(py, env)
        if pyv[0] == "ok" and not isinstance(pyv[1], complex):
            try:
                pyv = ("ok", bool(pyv[1]))
            except TypeError:
                pyv = ("raise", "TypeError")
        assert _same(ref, pyv), (rule, env, ref, pyv)


@settings(max_examples=300, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_reference_matches_python_values(all_schema, seed):
    """Numeric expressions: the exact value and kind (int vs float) match Python."""
    rng = random.Random(seed)
    rule, py, kind = gen_num(rng, rng.randint(1, 4))
    value_node = _compile_or_skip(rule, all_schema, value=True)
    assume(value_node is not None)
    for _ in range(4):
        env = event_env(to_record([random_event(rng, all_schema)], all_schema)[0], all_schema)
        ref = _ref(value_node, env)
        pyv = python_value(py, env)
        assert _same(ref, pyv), (rule, env, ref, pyv)


@settings(max_examples=300, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_reference_exact_u64_forms_match_python(all_schema, seed):
    """if-else, and/or, min/max, abs, round, in, comparisons over u64 and signed values at
    every 64-bit edge: no arithmetic, so never an evaluation error, and Python's value."""
    rng = random.Random(seed)
    rule, py = gen_exact_bool(rng, rng.randint(1, 4))
    vrule, vpy, _ = gen_exact(rng, rng.randint(1, 4))
    node = _compile_or_skip(rule, all_schema)
    value_node = _compile_or_skip(vrule, all_schema, value=True)
    for _ in range(4):
        env = event_env(to_record([random_event(rng, all_schema)], all_schema)[0], all_schema)
        assert _ref(node, env) == ("ok", bool(python_value(py, env)[1])), (rule, env)
        ref, pyv = _ref(value_node, env), python_value(vpy, env)
        assert ref[0] == "ok" and ref[1] == pyv[1], (vrule, env, ref, pyv)


def test_u64_through_if_else_and_min_max_is_exact(all_schema):
    """The forms of issue 20 (defect 5), account_id = 2**64-1 and card_id = 2**63."""
    env = event_env(to_record([{"k": 2**64 - 1, "u64f": 2**63, "f64f": 1.0, "i64f": -1}], all_schema)[0],
                    all_schema)
    for text in ("k > (3 if f64f > f64f else u64f)", "k > (u64f if flag else u64f)", "max(u64f, 3) > 100",
                 "min(u64f, i64f) == -1", "abs(u64f) == u64f", "round(u64f) == u64f",
                 "(i64f or u64f) == -1", "max(i64f, u64f, k) == k", "(u64f if not flag else i64f) == u64f"):
        assert _ref(_compile_or_skip(text, all_schema), env) == ("ok", True), text


# One kernel holds each random ruleset; its cold compile dominates this file. `make test` runs
# the small one; the 96-rule one (75 s cold) runs in make test-slow (CI).
N_RULES, N_EXACT = 96, 32          # rules, of which gen_exact_bool rules (ids x<n>)
N_RULES_FAST, N_EXACT_FAST = 24, 8


def _random_ruleset(all_schema, kernel_cache, tmp_path_factory, n_rules: int, n_exact: int):
    rng = random.Random(20261128 + n_rules)
    rules = []
    while len(rules) < n_rules:
        exact = len(rules) >= n_rules - n_exact
        text, _ = (gen_exact_bool if exact else gen_bool)(rng, rng.randint(1, 4))
        if _compile_or_skip(text, all_schema) is None:
            continue
        mode = "shadow" if rng.random() < 0.15 else "enforce"
        rules.append(f"  - id: {'x' if exact else 'g'}{len(rules)}\n    when: {text!r}\n    action: "
                     f"{rng.choice(['allow', 'review', 'block'])}\n    score: {rng.choice([0, 1, 2.5, 3])}\n"
                     f"    mode: {mode}\n")
    path = tmp_path_factory.mktemp("diff") / f"random{n_rules}.yaml"
    path.write_text(f"ruleset: random\nversion: 1\n{CONSTANTS_YAML}\nrules:\n" + "".join(rules))
    return compile_ruleset([str(path)], all_schema, thresholds={"review": 6, "block": 11},
                           cache_dir=kernel_cache)


@pytest.fixture(scope="module")
def random_ruleset(all_schema, kernel_cache, tmp_path_factory):
    return _random_ruleset(all_schema, kernel_cache, tmp_path_factory, N_RULES, N_EXACT)


@pytest.fixture(scope="module")
def small_ruleset(all_schema, kernel_cache, tmp_path_factory):
    return _random_ruleset(all_schema, kernel_cache, tmp_path_factory, N_RULES_FAST, N_EXACT_FAST)


def _check_batch(rs, arr, strided: bool):
    n = len(arr)
    if strided:                           # the engine passes views into rings: layout 'A'
        big = np.zeros(2 * n, arr.dtype)
        big[::2] = arr
        events = big[::2]
        out_big = np.zeros(3 * n, RESPONSE_SLOT_DTYPE)
        out_big["token"] = 77
        out_big["generation"] = 5
        out = out_big[::3]
    else:
        events, out = arr, np.zeros(n, RESPONSE_SLOT_DTYPE)
    bits = np.zeros((n, rs.n_words), np.uint64)
    hits = np.zeros(rs.n_rules, np.int64)
    errors = np.zeros(rs.n_rules, np.int64)
    rs.kernel(events, _arr(events), out, bits, hits, errors)
    want_hits = np.zeros(rs.n_rules, np.int64)
    want_errors = np.zeros(rs.n_rules, np.int64)
    for i in range(n):
        d = rs.reference_decision(arr[i])
        fired = {w * 64 + b for w in range(rs.n_words) for b in range(64) if int(bits[i, w]) >> b & 1}
        assert fired == set(d.fired), (i, sorted(fired ^ d.fired))
        assert int(out[i]["action"]) == d.action
        assert float(out[i]["score"]) == d.score
        assert int(out[i]["nfired"]) == len(d.fired)
        k = min(len(d.fired), MAX_FIRED)
        assert list(out[i]["fired"][:k]) == rs.slot_fired(d.fired)
        flags = int(out[i]["flags"])
        assert bool(flags & DecisionFlag.EVAL_ERROR) == bool(d.errors)
        assert bool(flags & DecisionFlag.FIRED_OVERFLOW) == (len(d.fired) > MAX_FIRED)
        for r in d.fired:
            want_hits[r] += 1
        for r in d.errors:
            want_errors[r] += 1
    assert (hits == want_hits).all() and (errors == want_errors).all()
    if strided:
        assert (out_big["token"] == 77).all() and (out_big["generation"] == 5).all()
        assert (out_big[1::3]["score"] == 0).all()


@settings(max_examples=12, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 3, 17, 64]), strided=st.booleans())
def test_small_kernel_matches_reference(small_ruleset, all_schema, seed, n, strided):
    rng = random.Random(seed)
    arr = to_record([random_event(rng, all_schema) for _ in range(n)], all_schema)
    _check_batch(small_ruleset, arr, strided)


@pytest.mark.slow
@settings(max_examples=40, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 3, 17, 64]), strided=st.booleans())
def test_kernel_matches_reference(random_ruleset, all_schema, seed, n, strided):
    rng = random.Random(seed)
    arr = to_record([random_event(rng, all_schema) for _ in range(n)], all_schema)
    _check_batch(random_ruleset, arr, strided)


def test_small_kernel_rule_values_match_python(small_ruleset, all_schema):
    _check_rule_values(small_ruleset, all_schema, min_checked=250)


@pytest.mark.slow
def test_kernel_rule_values_match_python(random_ruleset, all_schema):
    _check_rule_values(random_ruleset, all_schema, min_checked=1000)


def _check_rule_values(random_ruleset, all_schema, min_checked: int):
    """Each compiled rule's fired bit equals Python's truth of its text where Python defines it."""
    rng = random.Random(7)
    arr = to_record([random_event(rng, all_schema) for _ in range(64)], all_schema)
    out, bits, hits, errors = random_ruleset.new_buffers(len(arr))
    random_ruleset.kernel(arr, _arr(arr), out, bits, hits, errors)
    texts = [l.split("when: ", 1)[1] for l in open(random_ruleset.where[0].rsplit(":", 1)[0]).read().splitlines()
             if l.startswith("    when: ")]
    import ast
    texts = [ast.literal_eval(t) for t in texts]
    checked = 0
    for i in range(len(arr)):
        env = event_env(arr[i], all_schema)
        d = random_ruleset.reference_decision(arr[i])
        for r, text in enumerate(texts):
            py_text = text   # between() has no Python twin here: define it lazily-equivalent
            pyv = python_value(py_text.replace("between(", "_between("), {**env, "_between": lambda x, lo, hi: lo <= x <= hi})
            if pyv[0] == "raise" or isinstance(pyv[1], complex):
                continue
            try:
                truth = bool(pyv[1])
            except TypeError:
                continue
            if random_ruleset.rule_ids[r].startswith("x"):
                assert r not in d.errors, (text, env)       # no arithmetic: never an error
            if r in d.errors:
                continue
            fired = bool(int(bits[i, r // 64]) >> (r % 64) & 1)
            assert fired == truth, (text, env)
            checked += 1
    assert checked > min_checked
