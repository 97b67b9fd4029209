"""`risk-engine explain` (engine/explain.py): exact for journaled events of a real engine, and
stable errors for what it cannot answer.

The exactness test runs a real engine with two workers and a feature of every kind, random
rules, admin changes (list, account state, halt) and a SIGKILL of the whole engine between
two requests, then checks for randomly chosen journaled events: the replayed decision equals
the recorded one, every feature/state/halt value equals a brute-force recount of the journal
(rules.feature_model, the reference oracle) and every clause equals the reference
evaluator's on that recount. Size: RISK_EXPLAIN_EVENTS events sent (default 240) and
RISK_EXPLAIN_SAMPLES explained (default 24). The issue's run:
    RISK_EXPLAIN_EVENTS=10000 RISK_EXPLAIN_SAMPLES=10000 python -m pytest --timeout 0 -m slow \\
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
from shm.runtime.config import load_config
from engine.explain import ExplainError, Explainer, explain
from engine.explain_replay import parse_request_key
from engine.explain_trace import trace
from engine.journal import JournalWriter, iter_merged
from rules.feature_model import FeatureModel
from rules.reference import event_env
from bench.engine_proc import REPO, EngineProcess
from bench.events import random_events

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


def _send(eng, schema, evs, client_id: int, transport: str = "binary") -> list:
    """Each event as its own request of ``client_id`` (request ids 1, 2, ...); their keys.
    Binary one-event requests take the ingress's fast path, JSON ones the general path."""
    from ingress.client import Client
    with Client(eng.endpoint, schema, timeout_ms=10_000, retries=0, client_id=client_id,
                transport=transport) as c:
        for i in range(len(evs)):                     # one at a time: see the module docstring
            c.evaluate_batch(evs[i:i + 1])
    return [(client_id, i + 1) for i in range(len(evs))]


def _send_batch(eng, schema, evs, client_id: int) -> tuple:
    """All of ``evs`` as one request (request id 1): the ingress splits it across workers."""
    from ingress.client import Client
    with Client(eng.endpoint, schema, timeout_ms=10_000, retries=0, client_id=client_id) as c:
        c.evaluate_batch(evs)
    return client_id, 1


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
    from shm.features.state import STATE_NAMES
    from shm.features.spec import specs_from_config
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


@pytest.mark.slow                # two workers, a SIGKILL and a replay per sample, 75 s; the CLI and admin tests stay: make test-slow (CI)
def test_explain_is_exact_across_workers_admin_changes_and_a_sigkill(tmp_path):
    rules_path = tmp_path / "explain_rules.yaml"
    rules_path.write_text(yaml.safe_dump(random_rules(7)))
    list_path = tmp_path / "blocked.txt"
    list_path.write_text("10.0.0.1\n")
    schema = load_config().schema
    rng = np.random.default_rng(11)
    evs = _events(rng, schema, EVENTS)
    # the last 4 events are one request, decided by both workers at once: no key of a
    # feature that is not sharded (card, device) may be shared between them
    evs["account_id"][-4:] = [0, 1, 2, 3]
    evs["card_id"][-4:] = evs["device_id"][-4:] = 1000 + np.arange(4)
    q = EVENTS // 4
    keys = []                                         # (client_id, request_id) of each event
    eng = _engine(tmp_path, rules_path, list_path).start()
    try:
        keys += _send(eng, schema, evs[:q], 11)
        _admin(eng, cmd="snapshot")
        _admin(eng, cmd="list-add", name="blocked_ips", values=["10.0.0.2", "10.0.0.3"])
        _admin(eng, cmd="set-state", name="account_state", key=3, state="HALTED")
        keys += _send(eng, schema, evs[q:2 * q], 2**64 - 12, transport="json")
        _admin(eng, cmd="halt")
        keys += _send(eng, schema, evs[2 * q:2 * q + 10], 0)    # client 0: never deduplicated,
        _admin(eng, cmd="resume")
        _admin(eng, cmd="snapshot")
        keys += _send(eng, schema, evs[2 * q + 10:2 * q + 11], 0)   # so request id 1 twice
        keys += _send(eng, schema, evs[2 * q + 11:3 * q], 13)
    finally:
        eng.kill()                                    # SIGKILL the whole engine between requests
    eng2 = _engine(tmp_path, rules_path, list_path, first=eng)
    cfg = load_config(str(eng.config_path))
    jdir = eng.raw["journal"]["dir"]
    with eng2:
        assert "recovered feature state" in eng2.output()
        keys += _send(eng2, schema, evs[3 * q:3 * q + 20], 21)
        _admin(eng2, cmd="set-state", name="account_state", key=3, state="ACTIVE")
        _admin(eng2, cmd="snapshot")
        keys += _send(eng2, schema, evs[3 * q + 20:-4], 22, transport="json")
        batch_key = _send_batch(eng2, schema, evs[-4:], 23)
        _check_admin_explain(eng2, cfg, jdir, batch_key)
    merged = [(int(w), r) for recs, wid in iter_merged(jdir, schema.dtype, schema.hash)
              for w, r in zip(wid.tolist(), recs)]
    seqs = [(w, int(r["seq"])) for w, r in merged]
    assert len(seqs) == EVENTS and {w for w, _ in seqs} == {0, 1}
    ex = Explainer(cfg, jdir)
    _check_request_ids(ex, schema, evs, merged, keys, batch_key)
    wanted = set(random.Random(3).sample(seqs, min(SAMPLES, len(seqs))))
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


def _check_request_ids(ex, schema, evs, merged, keys, batch_key):
    """Every journal record carries the (client_id, request_id) its request was sent with,
    through the fast path (binary, one event), the general path (JSON, a batch) and a
    recovery; ``explain --request`` finds the same events as by seq, and names both requests
    of a client-0 request id that was sent twice."""
    n = len(keys)                                     # the single-event requests, in send order
    assert [(int(r["client_id"]), int(r["request_id"])) for _, r in merged[:n]] == keys
    assert all(event_env(r["event"], schema) == event_env(evs[k], schema)
               for k, (_, r) in enumerate(merged[:n]))
    batch = [(w, int(r["seq"])) for w, r in merged[n:]]
    assert {(int(r["client_id"]), int(r["request_id"])) for _, r in merged[n:]} == {batch_key}
    assert len(batch) == 4 and {w for w, _ in batch} == {0, 1}   # split across both workers
    for k in (3, len(evs) // 4 + 5, n - 1):             # fast path, JSON, after the restart
        got = ex.explain_request(*keys[k])
        (w, r), = [merged[k]]
        assert [(e.writer, e.seq) for e in got.events] == [(w, int(r["seq"]))]
        assert got.arrival_ns == int(r["arrival_ns"]) and got.agrees
        if k == 3:                                    # the same explanation as by seq
            assert got.events[0].to_dict() == ex.explain(int(r["seq"]), w).to_dict()
    got = ex.explain_request(*batch_key)
    assert [(e.writer, e.seq) for e in got.events] == sorted(batch) and got.agrees
    assert sorted(e.event["card_id"] for e in got.events) == [1000, 1001, 1002, 1003]
    twice = [(w, int(r["seq"])) for w, r in merged[:n] if (int(r["client_id"]), int(r["request_id"])) == (0, 1)]
    assert len(twice) == 2
    with pytest.raises(ExplainError) as e:
        ex.explain_request(0, 1)
    assert e.value.code == "REQUEST_AMBIGUOUS" and "client_id 0 is never deduplicated" in e.value.message
    assert all(f"writer={w} seq={s}" in e.value.message for w, s in twice)
    with pytest.raises(ExplainError) as e:
        ex.explain_request(11, 10**6)
    assert e.value.code == "REQUEST_NOT_IN_JOURNAL"


def _check_admin_explain(eng, cfg, jdir, batch_key):
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
    # request=: every event of the batch request, each as explained by seq
    rep = admin_request(eng.admin_bind, {"cmd": "explain", "request": "%d:%d" % batch_key}, 600_000)
    assert rep["ok"], rep
    got = rep["request"]
    assert (got["client_id"], got["request_id"]) == batch_key and got["agrees"]
    assert len(got["events"]) == 4 and len({(e["writer"], e["seq"]) for e in got["events"]}) == 4
    first = got["events"][0]
    want = explain(cfg, jdir, first["seq"], first["writer"]).to_dict()
    assert first["recorded"] == want["recorded"] and first["values"] == want["values"]
    assert first["event"] == want["event"] and first["arrival_ns"] == got["arrival_ns"]
    for bad, code in (({"seq": 0}, "BAD_ARGUMENT"), ({"seq": "1"}, "BAD_ARGUMENT"),
                      ({"seq": True}, "BAD_ARGUMENT"), ({"seq": 1, "writer": 1.0}, "BAD_ARGUMENT"),
                      ({"seq": 1, "x": 1}, "BAD_ARGUMENT"), ({}, "BAD_ARGUMENT"),
                      ({"request": "23"}, "BAD_ARGUMENT"), ({"request": 23}, "BAD_ARGUMENT"),
                      ({"request": "23:-1"}, "BAD_ARGUMENT"), ({"request": f"1:{2**64}"}, "BAD_ARGUMENT"),
                      ({"request": "23:1", "seq": 1}, "BAD_ARGUMENT"),
                      ({"request": "23:1", "writer": 0}, "BAD_ARGUMENT"),
                      ({"seq": 10**9, "writer": 0}, "SEQ_NOT_IN_JOURNAL"),
                      ({"seq": 1}, "WRITER_REQUIRED")):
        rep = admin_request(eng.admin_bind, {"cmd": "explain", **bad}, 600_000)
        assert not rep["ok"] and rep["error"]["code"] == code, (bad, rep)


# --- errors and the command line (a journal written directly) -----------------------------

@pytest.fixture
def small_journal(tmp_path):
    """A one-writer journal of 20 events of one account, decided by the default config's
    kernel in order (as a worker would have), no snapshots. Requests: client 77, request ids
    101..120, except seq 11 and 12, one request (111) of two events, and seq 19 and 20, two
    requests of client 0 with request id 5."""
    from rules import compile_ruleset
    from rules.features import feature_set_for
    cfg = load_config()
    ev = np.zeros(20, cfg.schema.dtype)
    ev["account_id"], ev["amount"], ev["currency"] = 5, 10.0, b"USD"
    arrival = 10**18 + np.arange(20, dtype=np.int64) * 1_000_000
    arrival[11] = arrival[10]                         # one request's events share its arrival
    cid, rid = np.full(20, 77, np.uint64), np.arange(101, 121, dtype=np.uint64)
    rid[11], cid[18:], rid[18:] = 111, 0, 5
    rs = compile_ruleset(list(cfg.rules.files), cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=feature_set_for(cfg))
    out = rs.evaluate(ev, arrival_ns=arrival)
    jdir = tmp_path / "journal"
    w = JournalWriter(str(jdir), cfg.schema.dtype, cfg.schema.hash, writer_id=0)
    w.append_columns(ev, arrival, out["action"], out["flags"], out["score"], 1, cid, rid)
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
    ex = Explainer(cfg, jdir, snapshot_dir=None)
    code, msg = _code(lambda: ex.explain_request(0, 5))
    assert code == "REQUEST_AMBIGUOUS" and "writer=0 seq=19" in msg and "writer=0 seq=20" in msg
    assert _code(lambda: ex.explain_request(77, 5))[0] == "REQUEST_NOT_IN_JOURNAL"
    assert _code(lambda: ex.explain_request(78, 101))[0] == "REQUEST_NOT_IN_JOURNAL"
    for bad in ("5", "a:1", "1:", ":1", "-1:2", f"1:{2**64}", "1:2:3", "\u0661:1"):
        with pytest.raises(ValueError):
            parse_request_key(bad)
    assert parse_request_key(f"0:{2**64 - 1}") == (0, 2**64 - 1)


def _write_v1(jdir: str, cfg, out) -> np.ndarray:
    """The records of ``jdir`` as a version-1 engine wrote them (no client and request ids,
    40 B + the event), in one segment of ``out`` with 10 free records; returns them."""
    from engine.journal import JournalReader, checksum
    from shm.journal_format import HEADER_SIZE, SegmentHeader, journal_dtype, segment_name
    recs = JournalReader(jdir, cfg.schema.dtype, cfg.schema.hash, 0).read_all()
    v1 = np.zeros(len(recs), journal_dtype(cfg.schema.dtype, version=1))
    for f in v1.dtype.names:
        v1[f] = recs[f]
    v1["check"] = checksum(v1)
    path = os.path.join(out, segment_name(0, 1))
    h = SegmentHeader(path, cfg.schema.hash, v1.dtype.itemsize, 0, 1, 0, len(v1) + 10, version=1)
    with open(path, "wb") as f:
        f.write(h.pack().ljust(HEADER_SIZE, b"\0") + v1.tobytes() + bytes(10 * v1.dtype.itemsize))
    return recs


def test_a_journal_of_the_previous_format_is_refused_not_misread_then_converted(small_journal, tmp_path):
    """Version 1 records had no client_id/request_id (16 bytes fewer): a version-1 journal
    is refused by name (JOURNAL_VERSION) by explain, the reader and a reopening writer, never
    read with the new layout nor taken for corruption; `journal-upgrade` converts it (same
    seqs, ids 0) and the converted journal explains exactly."""
    from engine.journal import JournalReader, JournalVersionError
    from engine.journal_upgrade import upgrade
    cfg, jdir = small_journal
    old = tmp_path / "v1"
    old.mkdir(mode=0o700)
    recs = _write_v1(jdir, cfg, str(old))
    code, msg = _code(lambda: explain(cfg, str(old), 3, snapshot_dir=None))
    assert code == "JOURNAL_VERSION" and "format version 1" in msg and "journal-upgrade" in msg
    assert _code(lambda: Explainer(cfg, str(old), snapshot_dir=None).explain_request(77, 103))[0] \
        == "JOURNAL_VERSION"
    with pytest.raises(JournalVersionError):
        JournalReader(str(old), cfg.schema.dtype, cfg.schema.hash, 0).read_all()
    with pytest.raises(JournalVersionError):
        JournalWriter(str(old), cfg.schema.dtype, cfg.schema.hash, writer_id=0).close()
    new = tmp_path / "v2"
    rep = upgrade(str(old), str(new), cfg.schema.dtype, cfg.schema.hash)
    assert rep.writers == {0: (1, 20, 20)} and rep.torn == []
    got = JournalReader(str(new), cfg.schema.dtype, cfg.schema.hash, 0).read_all()
    for f in ("seq", "arrival_ns", "event", "score", "generation", "action", "flags"):
        assert (got[f] == recs[f]).all(), f            # (tobytes of a field view: padding undefined)
    assert not got["client_id"].any() and not got["request_id"].any()
    e = explain(cfg, str(new), 12, snapshot_dir=None)
    assert e.agrees and e.values["txn_count_1m"] == 12
    with pytest.raises(Exception, match="not empty"):             # never into a used directory
        upgrade(str(old), str(new), cfg.schema.dtype, cfg.schema.hash)


def test_a_corrupt_record_before_the_event_is_reported_not_skipped(small_journal):
    from shm.journal_format import HEADER_SIZE, journal_dtype, list_segments
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
    p = run("--request", "77:111", "--json", "--no-snapshots")   # the request of seq 11 and 12
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["client_id"], r["request_id"], r["agrees"]) == (77, 111, True)
    assert [(e["writer"], e["seq"]) for e in r["events"]] == [(0, 11), (0, 12)]
    assert r["events"][1]["values"] == explain(cfg, jdir, 12, snapshot_dir=None).to_dict()["values"]
    p = run("--request", "0:5", "--no-snapshots")
    assert p.returncode == 1 and "REQUEST_AMBIGUOUS" in p.stderr and "seq=20" in p.stderr
    p = run("--request", "1:2", "--writer", "0")
    assert p.returncode == 2 and "--writer goes with --seq" in p.stderr
    p = run("--seq", "99", "--no-snapshots")
    assert p.returncode == 1 and "SEQ_NOT_IN_JOURNAL" in p.stderr
