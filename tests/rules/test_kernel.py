"""The compiled kernel: decisions, bitmaps, counters, on_error, limits, the cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shm.types import MAX_FIRED, RESPONSE_SLOT_DTYPE, Action, DecisionFlag
from rules import compile_ruleset


def _arr(events):
    """The arrival_ns argument of the kernel (unused without features)."""
    return np.zeros(len(events), np.int64)


RULES = """
ruleset: pay
version: 3
constants: {RISKY: ["NG", "RU"], BIG: 1000}
rules:
  - {id: big, when: "f64f > BIG", action: review, score: 30}
  - {id: risky, when: "code in RISKY", action: block, score: 10}
  - {id: div, when: "100 // i64f > 1", score: 25}
  - {id: name_match, when: "name == b'0123456789'", score: 5, mode: shadow}
  - {id: off, when: "f64f > 0", action: block, enabled: false}
  - {id: u64_big, when: "k > 9223372036854775807", score: 7}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("k")
    (d / "pay.yaml").write_text(RULES)
    many = ["ruleset: many", "version: 1", "rules:"]
    many += [f"  - {{id: m{k}, when: 'i32f > {k}', score: 1}}" for k in range(70)]
    (d / "many.yaml").write_text("\n".join(many) + "\n")
    return d


@pytest.fixture(scope="module")
def pay(files, all_schema, kernel_cache):
    return compile_ruleset([str(files / "pay.yaml")], all_schema, thresholds={"block": 60},
                           cache_dir=kernel_cache)


def _events(schema, **cols):
    n = len(next(iter(cols.values())))
    ev = np.zeros(n, schema.dtype)
    for k, v in cols.items():
        ev[k] = v
    return ev


def test_metadata(pay):
    assert pay.rule_ids == ("big", "risky", "div", "name_match", "u64_big")   # disabled: no index
    assert pay.label == "pay@3" and pay.name == "pay" and pay.version == "3"
    assert pay.modes[3] == "shadow" and pay.actions[1] == Action.BLOCK and pay.scores[0] == 30
    assert pay.n_rules == 5 and pay.index_of("div") == 2


def test_decisions(pay, all_schema):
    ev = _events(all_schema, f64f=[5000, 5000, 0, 0, 0], code=[b"NG", b"", b"", b"", b"US"],
                 i64f=[1, 0, 1, 1000, 1], name=[b"", b"", b"0123456789", b"", b""],
                 k=[0, 0, 0, 2**63, 2**63 - 1])
    out = pay.evaluate(ev)
    # 0: big (30, review) + risky (10, block) + div (25) = 65 >= 60 -> block
    assert (out[0]["action"], out[0]["score"], out[0]["nfired"]) == (Action.BLOCK, 65.0, 3)
    assert list(out[0]["fired"][:3]) == [0, 1, 2] and out[0]["flags"] == 0
    # 1: i64f = 0 -> 100 // 0 is an evaluation error: div not fired, flag set
    assert (out[1]["action"], out[1]["score"], out[1]["nfired"]) == (Action.REVIEW, 30.0, 1)
    assert out[1]["flags"] == DecisionFlag.EVAL_ERROR
    # 2: shadow rule fires, reported, no score/action
    assert (out[2]["action"], out[2]["score"], out[2]["nfired"]) == (Action.ALLOW, 25.0, 2)
    assert list(out[2]["fired"][:2]) == [2, 3]
    # 3: 100 // 1000 == 0: nothing but the exact u64 comparison
    assert (out[3]["action"], out[3]["score"], list(out[3]["fired"][:1])) == (Action.ALLOW, 7.0, [4])
    assert out[4]["nfired"] == 1 and out[4]["fired"][0] == 2
    for i in range(len(ev)):
        a, s, f = pay.reference(ev[i])
        assert (a, s) == (out[i]["action"], out[i]["score"])
        assert sorted(f) == list(out[i]["fired"][:out[i]["nfired"]])


def test_counters_accumulate_and_bits(pay, all_schema):
    ev = _events(all_schema, f64f=[5000, 1, 5000], i64f=[0, 0, 1])
    out, bits, hits, errors = pay.new_buffers(3)
    bits[:] = 0xFFFF          # stale scratch is overwritten
    for _ in range(2):
        pay.kernel(ev, _arr(ev), out, bits, hits, errors)
    assert list(hits) == [4, 0, 2, 0, 0] and list(errors) == [0, 0, 4, 0, 0]
    assert list(bits[:, 0]) == [0b1, 0, 0b101]


def test_on_error_fire(files, all_schema, kernel_cache):
    rs = compile_ruleset([str(files / "pay.yaml")], all_schema, on_error="fire", cache_dir=kernel_cache)
    out = rs.evaluate(_events(all_schema, i64f=[0]))
    assert out[0]["nfired"] == 1 and out[0]["fired"][0] == 2 and out[0]["score"] == 25.0
    assert out[0]["flags"] == DecisionFlag.EVAL_ERROR
    assert rs.reference(_events(all_schema, i64f=[0])[0]) == (Action.ALLOW, 25.0, frozenset({2}))


def test_many_rules_multiword_bitmap_and_overflow(files, all_schema, kernel_cache):
    rs = compile_ruleset([str(files / "many.yaml")], all_schema, thresholds={"review": 20, "block": 65},
                         cache_dir=kernel_cache)
    assert rs.n_words == 2
    ev = _events(all_schema, i32f=[0, 1, 17, 69, 100])
    out, bits, hits, errors = rs.new_buffers(len(ev))
    rs.kernel(ev, _arr(ev), out, bits, hits, errors)
    assert list(out["nfired"]) == [0, 1, 17, 69, 70]
    assert list(out["action"]) == [0, 0, 0, Action.BLOCK, Action.BLOCK]
    assert out[2]["flags"] == out[3]["flags"] == DecisionFlag.FIRED_OVERFLOW and out[1]["flags"] == 0
    assert list(out[3]["fired"]) == list(range(MAX_FIRED))
    assert int(bits[4, 0]) == 2**64 - 1 and int(bits[4, 1]) == 0b111111
    assert list(out[1]["fired"][:2]) == [0, 0]      # unused slots are cleared
    assert list(hits[:3]) == [4, 3, 3]


def test_overflow_keeps_the_rules_that_set_the_action(write_rules, all_schema, kernel_cache):
    """Issue 20, defect 1: 20 rules fire; the three blocking ones come last in file order and
    two shadow rules come first. The 16 slots must hold the blocking and reviewing rules,
    then the highest-scoring allow rules, shadow rules only if room is left."""
    rules = ["  - {id: s%d, when: 'i32f > 0', action: block, score: 50, mode: shadow}" % k for k in range(2)]
    rules += ["  - {id: a%d, when: 'i32f > 0', score: %d}" % (k, 1 + (k == 13)) for k in range(14)]
    rules += ["  - {id: r0, when: 'i32f > 0', action: review, score: 5}"]
    rules += ["  - {id: b%d, when: 'i32f > 0', action: block}" % k for k in range(3)]
    rs = compile_ruleset([write_rules("ruleset: o\nversion: 1\nrules:\n" + "\n".join(rules) + "\n")],
                         all_schema, cache_dir=kernel_cache)
    out = rs.evaluate(_events(all_schema, i32f=[1, 0]))
    assert out[0]["nfired"] == 20 and out[0]["flags"] == DecisionFlag.FIRED_OVERFLOW
    ids = [rs.rule_ids[k] for k in out[0]["fired"]]
    assert ids == ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10", "a13",
                   "r0", "b0", "b1", "b2"]
    assert list(out[0]["fired"]) == rs.slot_fired(rs.reference_decision(_events(all_schema, i32f=[1])[0]).fired)
    assert out[1]["nfired"] == 0 and out[1]["flags"] == 0


def test_strided_views_leave_token_and_generation(pay, all_schema):
    slots = np.zeros(8, [("token", np.uint64), ("event", all_schema.dtype)])
    slots["event"]["f64f"] = 5000
    resp = np.zeros(8, RESPONSE_SLOT_DTYPE)
    resp["token"] = np.arange(8)
    resp["generation"] = 9
    out, bits, hits, errors = pay.new_buffers(3)
    pay.kernel(slots["event"][2:5], _arr(slots["event"][2:5]), resp[4:7], bits, hits, errors)
    assert list(resp["action"]) == [0, 0, 0, 0, 1, 1, 1, 0]
    assert list(resp["token"]) == list(range(8)) and (resp["generation"] == 9).all()


def test_entry_point_matches_dispatcher(pay, all_schema):
    ev = _events(all_schema, f64f=[5000, 1], code=[b"NG", b""])
    a, b = pay.new_buffers(2), pay.new_buffers(2)
    pay.kernel(ev, _arr(ev), *a)
    pay.entry(ev, _arr(ev), *b)
    for x, y in zip(a, b):
        assert (x == y).all()


def test_evaluate_validates(pay, all_schema):
    with pytest.raises(TypeError, match="events"):
        pay.evaluate(np.zeros(3, np.float64))
    with pytest.raises(TypeError, match="hits"):
        pay.evaluate(np.zeros(2, all_schema.dtype), hits=np.zeros(2, np.int64))
    pay.warm_up()


def test_bad_arguments(files, all_schema):
    with pytest.raises(ValueError, match="on_error='ignore'"):
        compile_ruleset([str(files / "pay.yaml")], all_schema, on_error="ignore")
    with pytest.raises(ValueError, match="thresholds: warn=5"):
        compile_ruleset([str(files / "pay.yaml")], all_schema, thresholds={"warn": 5})


_CHILD = """
import json, sys
from shm.schema import Schema
from tests.rules.conftest import ALL_TYPES
from rules import compile_ruleset
rs = compile_ruleset([sys.argv[1]], Schema.build(ALL_TYPES, "k"), cache_dir=sys.argv[2])
print(json.dumps({"hits": sum(rs.kernel.stats.cache_hits.values()),
                  "misses": sum(rs.kernel.stats.cache_misses.values()), "path": rs.module_path}))
"""


def test_cache_survives_restart(files, tmp_path):
    """A fresh process loads the kernel from the cache directory instead of compiling."""
    cache = tmp_path / "cache"
    runs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", _CHILD, str(files / "pay.yaml"), str(cache)],
                           capture_output=True, text=True, timeout=300, cwd=os.getcwd())
        assert p.returncode == 0, p.stderr
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    assert runs[0]["misses"] == 1 and runs[0]["hits"] == 0
    assert runs[1]["hits"] == 1 and runs[1]["misses"] == 0
    assert runs[0]["path"] == runs[1]["path"] and runs[0]["path"].startswith(str(cache))
    assert any(n.endswith(".nbi") for n in os.listdir(cache / "__pycache__"))


def test_extension_symbols_become_kernel_arguments(files, all_schema, kernel_cache):
    """The hook for features/lists (issue 4): extra state arrays after ``errors``."""
    from tests.rules.test_passes import _Blocked, _Count
    path = files / "ext.yaml"
    path.write_text("ruleset: ext\nversion: 1\nrules:\n"
                    "  - {id: velocity, when: 'txn_count_1m > 5', action: review, score: 10}\n"
                    "  - {id: listed, when: 'u32f in blocked_ips', action: block}\n")
    rs = compile_ruleset([str(path)], all_schema, cache_dir=kernel_cache,
                         extensions={"txn_count_1m": _Count(), "blocked_ips": _Blocked()})
    ev = _events(all_schema, u32f=[7, 8, 9])
    out, bits, hits, errors = rs.new_buffers(3)
    counts = np.array([6, 1, 9], np.int64)
    blocked = np.array([7, 9], np.int64)
    rs.kernel(ev, _arr(ev), out, bits, hits, errors, counts, blocked)
    assert list(out["action"]) == [Action.BLOCK, Action.ALLOW, Action.BLOCK]
    assert list(out["nfired"]) == [2, 0, 2]
    st = {"count": 6, "blocked": {7, 9}}
    assert rs.reference(ev[0], st) == (Action.BLOCK, 10.0, frozenset({0, 1}))


def test_large_sets_use_binary_search(files, all_schema, kernel_cache):
    """Sets of >= 33 items compile to a sorted-array search; same answers as the reference."""
    ints = list(range(-40, 400, 11))
    codes = [f"{chr(65 + a)}{chr(65 + b)}" for a in range(6) for b in range(7)]
    path = files / "big.yaml"
    path.write_text("ruleset: big\nversion: 1\nconstants:\n"
                    f"  INTS: {ints}\n  CODES: {codes}\n  U: {[2**40 + k for k in range(35)]}\n"
                    "rules:\n  - {id: i, when: 'i32f in INTS', score: 1}\n"
                    "  - {id: c, when: 'code not in CODES', score: 2}\n"
                    "  - {id: u, when: 'k in U', score: 4}\n")
    rs = compile_ruleset([str(path)], all_schema, cache_dir=kernel_cache)
    src = open(rs.module_path).read()
    one = src[src.index("def _single0(ev):"):]            # the per-event form of the three rules
    one = one[:one.index("return fw, ew")]
    assert "_in_sorted_i(" in one and one.count("_in_sorted_u(") == 2
    ev = _events(all_schema, i32f=[-40, -39, 399, 7, 0], code=[b"AA", b"AH", b"FG", b"", b"ZZ"],
                 k=[2**40, 2**40 + 34, 2**40 + 35, 0, 2**64 - 1])
    out = rs.evaluate(ev)
    assert list(out["score"]) == [5.0, 6.0, 0.0, 2.0, 2.0]
    for i in range(len(ev)):
        assert rs.reference(ev[i])[1] == out[i]["score"]
    assert list(rs.evaluate(np.concatenate([ev, ev]))["score"]) == [5.0, 6.0, 0.0, 2.0, 2.0] * 2   # column pass


@pytest.mark.parametrize("short", ["arrival_ns", "out", "bits_rows", "bits_words", "hits", "errors"])
def test_a_buffer_shorter_than_the_batch_is_refused_not_written_past(pay, all_schema, short):
    """Compiled code has no bounds checks: the kernel checks its buffers once per call."""
    n = 8
    ev = _events(all_schema, f64f=[5000.0] * n)
    out, bits, hits, errors = pay.new_buffers(n)
    args = {"arrival_ns": _arr(ev), "out": out, "bits_rows": bits, "bits_words": bits,
            "hits": hits, "errors": errors}
    args[short] = {"arrival_ns": lambda a: a[:n - 1], "out": lambda a: a[:n - 1],
                   "bits_rows": lambda a: a[:n - 1], "bits_words": lambda a: a[:, :0],
                   "hits": lambda a: a[:pay.n_rules - 1], "errors": lambda a: a[:pay.n_rules - 1]}[short](args[short])
    with pytest.raises(ValueError, match="shorter than the batch"):
        pay.kernel(ev, args["arrival_ns"], args["out"], args["bits_rows"] if short != "bits_words"
                   else args["bits_words"], args["hits"], args["errors"], *pay.feature_arrays)
    pay.kernel(ev, _arr(ev), out, bits, hits, errors, *pay.feature_arrays)    # the right sizes
    assert (out["score"] >= 30).all()
