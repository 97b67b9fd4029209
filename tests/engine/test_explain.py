"""`risk-engine explain` (engine/explain.py): exact for journaled events of a real engine, and
stable errors for what it cannot answer.

The exactness test runs a real engine with two workers and a feature of every kind, random
rules, admin changes (list, account state, halt) and a SIGKILL of the whole engine between
two requests, then checks for randomly chosen journaled events: the replayed decision equals
the recorded one, every feature/state/halt value equals a brute-force recount of the journal
(rules.feature_model, the reference oracle) and every clause equals the reference
evaluator's on that recount. Size: RISK_EXPLAIN_EVENTS events sent (default 240) and
RISK_EXPLAIN_SAMPLES explained (default 24). The issue's run:
    RISK_EXPLAIN_EVENTS=10000 RISK_EXPLAIN_SAMPLES=10000 python -m pytest --timeout 0 \\
        tests/engine/test_explain.py -k exact
Events are sent one request at a time by one client, so each event was decided after the
previous one: the live order across workers is the arrival order the replay uses.
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import yaml

from engine.admin import request as admin_request
from engine.admin_log import read as read_admin_log
from engine.config import load_config
from engine.explain import ExplainError, Explainer, explain
from engine.explain_trace import trace
from engine.journal import JournalWriter, iter_merged
from rules.feature_model import FeatureModel
from rules.reference import event_env
from tests.engine.engine_proc import REPO, EngineProcess
from tests.engine.test_e2e import random_events

EVENTS = int(os.environ.get("RISK_EXPLAIN_EVENTS", "240"))
SAMPLES = int(os.environ.get("RISK_EXPLAIN_SAMPLES", "24"))
BLOCKED = [0x0A000001, 0x0A000002, 0x0A000003]
IPS = BLOCKED + [0x0B000001, 0x0B000002, 0x0B000003, 0x0B000004, 0x0C000001]

FEATURES = {
    "cnt_acct": {"kind": "count", "key": "account_id", "window": "1h", "buckets": 60, "capacity": 4096},
    "sum_card": {"kind": "sum", "of": "amount", "key": "card_id", "window": "1h", "buckets": 12,
                 "update": "unless_blocked", "capacity": 4096},
    "avg_acct": {"kind": "avg", "of": "amount", "key": "account_id", "window": "10m", "buckets": 10, "capacity": 4096},
    "min_dev": {"kind": "min", "of": "amount", "key": "device_id", "window": "10m", "buckets": 10, "capacity": 4096},
    "max_acct": {"kind": "max", "of": "amount", "key": "account_id", "window": "10m", "buckets": 10,
                 "update": "unless_blocked", "capacity": 4096},
    "ips_acct": {"kind": "distinct", "of": "ip", "key": "account_id", "window": "1h", "capacity": 4096},
    "age_dev": {"kind": "age", "key": "device_id", "capacity": 4096},
    "last_card": {"kind": "last", "of": "amount", "key": "card_id", "capacity": 4096},
    "pair_cnt": {"kind": "count", "key": ["account_id", "mcc"], "window": "10s", "buckets": 10, "capacity": 4096},
}
ATOMS = ["cnt_acct > {k}", "sum_card >= {x}", "avg_acct > {x}", "min_dev < {x}", "max_acct >= {x}",
         "ips_acct >= {k}", "age_dev >= {s}", "last_card > {x}", "pair_cnt >= {k}", "ip in blocked_ips",
         "ip not in blocked_ips", "account_state == HALTED", "account_state != ACTIVE", "global_halt",
         "amount > {x}", "mcc in (1, 2)", "(cnt_acct if amount > {x} else pair_cnt) > {k}",
         "max(min_dev, avg_acct) <= {x}", "sum_card / (pair_cnt - 1) > {x}"]


def random_rules(seed: int, n: int = 14) -> dict:
    """Random conditions over every feature kind, list, state and the halt (and, or, not,
    if-else, min/max, a division that fails when its divisor is 0)."""
    rng = random.Random(seed)

    def atom():
        a = rng.choice(ATOMS)
        return a.format(k=rng.randint(1, 6), x=rng.choice([50, 200, 500, 800, 950]), s=rng.randint(0, 3))

    def cond(depth):
        if depth == 0 or rng.random() < 0.35:
            return atom()
        op = rng.choice(["and", "or", "not"])
        if op == "not":
            return f"not ({cond(depth - 1)})"
        return f"({cond(depth - 1)}) {op} ({cond(depth - 1)})"

    rules = [{"id": "big_max", "when": "max_acct >= 900", "action": "block", "score": 10}]
    for i in range(n):
        r = {"id": f"r{i}", "when": cond(2), "action": rng.choice(["allow", "review", "block"]),
             "score": rng.choice([0, 5, 20, 40, 60])}
        if rng.random() < 0.2:
            r["mode"] = "shadow"
        rules.append(r)
    return {"ruleset": "explain", "version": 1, "rules": rules}


def _events(rng, schema, n):
    ev = random_events(rng, schema, n)
    ev["account_id"] = rng.integers(0, 16, n)
    ev["card_id"] = rng.integers(0, 8, n)
    ev["device_id"] = rng.integers(0, 10, n)
    ev["amount"] = rng.integers(1, 1001, n).astype(np.float64)      # integers: sums are exact
    ev["ip"] = np.array(IPS, np.uint32)[rng.integers(0, len(IPS), n)]
    ev["mcc"] = rng.integers(1, 4, n)
    return ev


def _engine(tmp_path, rules_path, list_path, first=None):
    eng = EngineProcess(tmp_path, workers=2, overrides={"ingress": {"default_deadline_ms": 10_000},
                                                        "snapshot": {"interval_s": 3600}})
    if first is not None:                             # the restarted engine: same instance and state
        eng.instance = eng.raw["instance"] = first.instance
        for k in ("journal", "snapshot", "features", "lists", "state", "rules"):
            eng.raw[k] = first.raw[k]
    else:
        eng.raw["features"] = FEATURES
        eng.raw["lists"] = {"blocked_ips": {"type": "u32", "file": str(list_path)}}
        eng.raw["state"] = {"account_state": {"key": "account_id", "capacity": 4096}}
        eng.raw["rules"] = {**eng.raw["rules"], "files": [str(rules_path)]}
    eng.config_path.write_text(yaml.safe_dump(eng.raw, sort_keys=False))
    return eng


def _admin(eng, **req):
    rep = admin_request(eng.admin_bind, req, 30_000)
    assert rep.get("ok"), rep


def _send(eng, schema, evs) -> None:
    from ingress.client import Client
    with Client(eng.endpoint, schema, timeout_ms=10_000, retries=0) as c:
        for i in range(len(evs)):                     # one at a time: see the module docstring
            c.evaluate_batch(evs[i:i + 1])


def _norm(x):
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_norm(v) for v in x]
    return x


def _recount(cfg, jdir, rs, wanted: set) -> dict:
    """Brute force over the whole journal in merged order, admin changes by time: for each
    wanted (writer, seq) the oracle's values and every rule's clauses on them."""
    from engine.features.state import STATE_NAMES
    from engine.features.spec import specs_from_config
    model = FeatureModel(specs_from_config(cfg), cfg.schema)
    admin, _, _ = read_admin_log(os.path.join(jdir, "admin.log"))
    k, out = 0, {}
    for recs, wid in iter_merged(jdir, cfg.schema.dtype, cfg.schema.hash):
        for r, w in zip(recs, wid.tolist()):
            arrival = int(r["arrival_ns"])
            while k < len(admin) and admin[k]["mono_ns"] < arrival:
                e = admin[k]
                if e["cmd"] in ("halt", "resume"):
                    model.halt = e["cmd"] == "halt"
                elif e["cmd"] == "set-state":
                    model.set_state(e["name"], e["key"], STATE_NAMES[e["state"]])
                else:
                    cur, vals = model.lists[e["name"]], set(e["values"])
                    model.lists[e["name"]] = {"list-add": cur | vals, "list-remove": cur - vals,
                                              "list-replace": vals}[e["cmd"]]
                k += 1
            env = event_env(r["event"], cfg.schema)
            a_ms = arrival // 1_000_000
            model.begin(env, a_ms)
            if (w, int(r["seq"])) in wanted:
                out[(w, int(r["seq"]))] = (dict(model._vals),
                                           [trace(c, env, model) for c in rs.conditions],
                                           rs.reference_decision(env, model))
            model.commit(env, a_ms, int(r["action"]))
    return out


def test_explain_is_exact_across_workers_admin_changes_and_a_sigkill(tmp_path):
    rules_path = tmp_path / "explain_rules.yaml"
    rules_path.write_text(yaml.safe_dump(random_rules(7)))
    list_path = tmp_path / "blocked.txt"
    list_path.write_text("10.0.0.1\n")
    schema = load_config().schema
    rng = np.random.default_rng(11)
    evs = _events(rng, schema, EVENTS)
    q = EVENTS // 4
    eng = _engine(tmp_path, rules_path, list_path).start()
    try:
        _send(eng, schema, evs[:q])
        _admin(eng, cmd="snapshot")
        _admin(eng, cmd="list-add", name="blocked_ips", values=["10.0.0.2", "10.0.0.3"])
        _admin(eng, cmd="set-state", name="account_state", key=3, state="HALTED")
        _send(eng, schema, evs[q:2 * q])
        _admin(eng, cmd="halt")
        _send(eng, schema, evs[2 * q:2 * q + 10])
        _admin(eng, cmd="resume")
        _admin(eng, cmd="snapshot")
        _send(eng, schema, evs[2 * q + 10:3 * q])
    finally:
        eng.kill()                                    # SIGKILL the whole engine between requests
    eng2 = _engine(tmp_path, rules_path, list_path, first=eng)
    cfg = load_config(str(eng.config_path))
    jdir = eng.raw["journal"]["dir"]
    with eng2:
        assert "recovered feature state" in eng2.output()
        _send(eng2, schema, evs[3 * q:3 * q + 20])
        _admin(eng2, cmd="set-state", name="account_state", key=3, state="ACTIVE")
        _admin(eng2, cmd="snapshot")
        _send(eng2, schema, evs[3 * q + 20:])
        _check_admin_explain(eng2, cfg, jdir)
    seqs = [(int(w), int(s)) for recs, wid in iter_merged(jdir, schema.dtype, schema.hash)
            for w, s in zip(wid.tolist(), recs["seq"].tolist())]
    assert len(seqs) == EVENTS and {w for w, _ in seqs} == {0, 1}
    wanted = set(random.Random(3).sample(seqs, min(SAMPLES, len(seqs))))
    ex = Explainer(cfg, jdir)
    oracle = _recount(cfg, jdir, ex.rs, wanted)
    used_snapshot = 0
    for w, s in sorted(wanted):
        e = ex.explain(s, w)
        vals, clauses, ref = oracle[(w, s)]
        assert e.agrees, (w, s, e.mismatches)
        assert e.recorded_rules.kernel["action"] == e.recorded["action"]
        assert _norm(e.values) == _norm(vals), (w, s)
        for r, want in zip(e.recorded_rules.rules, clauses):
            assert _norm(r["clauses"]) == _norm(want), (w, s, r["id"])
        assert e.recorded_rules.reference["fired"] == [ex.rs.rule_ids[i] for i in sorted(ref.fired)]
        used_snapshot += e.replay["snapshot"] is not None
    assert used_snapshot > 0                          # the replay started from snapshots
    actions = set()
    for recs, _ in iter_merged(jdir, schema.dtype, schema.hash):
        actions |= set(recs["action"].tolist())
    assert 2 in actions and len(actions) > 1          # unless_blocked updates both skipped and made


def _check_admin_explain(eng, cfg, jdir):
    """`admin explain` answers from the journal while the engine serves, as the command does;
    its arguments are validated like every admin request's."""
    last = {}
    for recs, wid in iter_merged(jdir, cfg.schema.dtype, cfg.schema.hash):
        for w, s in zip(wid.tolist(), recs["seq"].tolist()):
            last[w] = s
    for w, s in ((0, 2), (1, last[1])):          # one of the first run, one of this run
        rep = admin_request(eng.admin_bind, {"cmd": "explain", "seq": s, "writer": w}, 600_000)
        assert rep["ok"], rep
        got, want = rep["explanation"], explain(cfg, jdir, s, w).to_dict()
        assert got["agrees"] and got["recorded"] == want["recorded"]
        assert got["values"] == want["values"] and got["recorded_rules"] == want["recorded_rules"]
    for bad, code in (({"seq": 0}, "BAD_ARGUMENT"), ({"seq": "1"}, "BAD_ARGUMENT"),
                      ({"seq": True}, "BAD_ARGUMENT"), ({"seq": 1, "writer": 1.0}, "BAD_ARGUMENT"),
                      ({"seq": 1, "x": 1}, "BAD_ARGUMENT"), ({}, "BAD_ARGUMENT"),
                      ({"seq": 10**9, "writer": 0}, "SEQ_NOT_IN_JOURNAL"),
                      ({"seq": 1}, "WRITER_REQUIRED")):
        rep = admin_request(eng.admin_bind, {"cmd": "explain", **bad}, 600_000)
        assert not rep["ok"] and rep["error"]["code"] == code, (bad, rep)


# --- errors and the command line (a journal written directly) -----------------------------

@pytest.fixture
def small_journal(tmp_path):
    """A one-writer journal of 20 events of one account, decided by the default config's
    kernel in order (as a worker would have), no snapshots."""
    from rules import compile_ruleset
    from rules.features import feature_set_for
    cfg = load_config()
    ev = np.zeros(20, cfg.schema.dtype)
    ev["account_id"], ev["amount"], ev["currency"] = 5, 10.0, b"USD"
    arrival = 10**18 + np.arange(20, dtype=np.int64) * 1_000_000
    rs = compile_ruleset(list(cfg.rules.files), cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=feature_set_for(cfg))
    out = rs.evaluate(ev, arrival_ns=arrival)
    jdir = tmp_path / "journal"
    w = JournalWriter(str(jdir), cfg.schema.dtype, cfg.schema.hash, writer_id=0)
    w.append_columns(ev, arrival, out["action"], out["flags"], out["score"], 1)
    w.close()
    return cfg, str(jdir)


def _code(fn):
    with pytest.raises(ExplainError) as e:
        fn()
    return e.value.code, str(e.value)


def test_errors_have_stable_codes(small_journal, tmp_path):
    cfg, jdir = small_journal
    assert _code(lambda: explain(cfg, str(tmp_path / "nope"), 1, snapshot_dir=None))[0] == "JOURNAL_NOT_FOUND"
    code, msg = _code(lambda: explain(cfg, jdir, 21, snapshot_dir=None))
    assert code == "SEQ_NOT_IN_JOURNAL" and "ends at seq 20" in msg
    assert _code(lambda: explain(cfg, jdir, 0, snapshot_dir=None))[0] == "SEQ_NOT_IN_JOURNAL"
    assert _code(lambda: explain(cfg, jdir, 1, 4, snapshot_dir=None))[0] == "SEQ_NOT_IN_JOURNAL"
    # a journal written under another schema is refused, not misread
    other = tmp_path / "other"
    w = JournalWriter(str(other), cfg.schema.dtype, cfg.schema.hash ^ 1, writer_id=0)
    w.append_columns(np.zeros(1, cfg.schema.dtype), np.ones(1, np.int64), np.zeros(1, np.uint8),
                     np.zeros(1, np.uint8), np.zeros(1), 1)
    w.close()
    assert _code(lambda: explain(cfg, str(other), 1, snapshot_dir=None))[0] == "SCHEMA_MISMATCH"


def test_a_corrupt_record_before_the_event_is_reported_not_skipped(small_journal):
    from engine.journal_format import HEADER_SIZE, journal_dtype, list_segments
    cfg, jdir = small_journal
    path = list_segments(jdir, 0)[0][1]
    rsize = journal_dtype(cfg.schema.dtype).itemsize
    with open(path, "r+b") as f:                      # flip a byte of record seq 5's event
        f.seek(HEADER_SIZE + 4 * rsize + 20)
        b = f.read(1)
        f.seek(HEADER_SIZE + 4 * rsize + 20)
        f.write(bytes([b[0] ^ 0xFF]))
    code, msg = _code(lambda: explain(cfg, jdir, 10, snapshot_dir=None))
    assert code == "JOURNAL_CORRUPT" and "seq=5" in msg


def test_explain_shows_features_clauses_and_a_candidate(small_journal, tmp_path):
    cfg, jdir = small_journal
    cand = tmp_path / "cand.yaml"
    cand.write_text(yaml.safe_dump({"ruleset": "whatif", "version": 2, "rules": [
        {"id": "velocity", "when": "txn_count_1m >= 10 and amount > 5", "action": "block", "score": 1}]}))
    e = explain(cfg, jdir, 12, snapshot_dir=None, candidate=[str(cand)])
    assert e.agrees, e.mismatches
    assert e.values["txn_count_1m"] == 12                 # 11 before it, plus the event itself
    assert e.replay["records"] == 11 and e.replay["snapshot"] is None
    c = e.candidate
    assert c.kernel["action"] == "block" and c.kernel["fired"] == ["velocity"]
    assert c.set_by.startswith("rule(s) velocity")
    cl = c.rules[0]["clauses"]
    assert cl[0]["value"] is True and cl[1]["expr"] == "txn_count_1m >= 10"
    assert cl[1]["operands"] == [{"expr": "txn_count_1m", "value": 12, "error": None},
                                 {"expr": "10", "value": 10, "error": None}]
    e1 = explain(cfg, jdir, 3, snapshot_dir=None, candidate=[str(cand)])
    cl = e1.candidate.rules[0]["clauses"]
    assert cl[0]["value"] is False and cl[2]["evaluated"] is False      # short-circuit shown


def test_cli_text_json_and_request(small_journal, tmp_path):
    cfg, jdir = small_journal
    run = lambda *a: subprocess.run([sys.executable, "-m", "engine.cli", "explain", "--journal", jdir, *a],
                                    capture_output=True, text=True, cwd=REPO, timeout=600)
    p = run("--seq", "4", "--no-snapshots")
    assert p.returncode == 0, p.stderr
    assert "replay agrees with the record" in p.stdout and "txn_count_1m" in p.stdout
    p = run("--seq", "4", "--no-snapshots", "--json")
    d = json.loads(p.stdout)
    assert d["agrees"] and d["values"]["txn_count_1m"] == 4 and d["seq"] == 4
    p = run("--request", "1:2")
    assert p.returncode == 2 and "REQUEST_NOT_JOURNALED" in p.stderr
    p = run("--seq", "99", "--no-snapshots")
    assert p.returncode == 1 and "SEQ_NOT_IN_JOURNAL" in p.stderr
