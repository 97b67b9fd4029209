"""End to end: a real `risk-engine serve` (supervisor, ingress, 2 workers, real rings), real
ZeroMQ clients, every decision checked against the rule compiler's reference evaluator."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq

from shm.runtime.config import load_config
from shm.types import ACTION_NAMES
from ingress.client import Client
from ingress.jsonevents import EventConverter
from bench.engine_proc import EngineProcess, shm_entries
from bench.events import random_events

CLIENTS = 8
REQUESTS = 1000               # x 8 clients: 8,000 requests, about 16,000 events, each checked
                              # against the Python reference (the bulk of this test's time)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with EngineProcess(tmp_path_factory.mktemp("e2e"), workers=2,
                       overrides={"ingress": {"default_deadline_ms": 10_000}}) as eng:
        yield eng


def compile_default():
    from rules import compile_ruleset
    from rules.features import feature_set_for
    cfg = load_config()
    return cfg.schema, compile_ruleset(list(cfg.rules.files), cfg.schema, thresholds=cfg.rules.thresholds,
                                       on_error=cfg.rules.on_error, features=feature_set_for(cfg))


@pytest.fixture(scope="module")
def reference():
    return compile_default()


def _expected(rs, rec):
    """The reference evaluator's decision for an event whose keys no other event shares
    (random_events draws 62-bit ids): its features hold just this event, whatever the order
    the engine saw the others in."""
    from rules.feature_model import FeatureModel, reference_stream
    model = FeatureModel(rs.features.specs, rs.schema, _LISTS.setdefault("v", _list_values(rs)))
    d = reference_stream(rs, model, np.asarray(rec).reshape(1), np.zeros(1, np.int64))[0]
    return ACTION_NAMES[d.action], d.score, d.fired


_LISTS: dict = {}


def _list_values(rs) -> dict:
    from shm.features.lists import load_list_file
    return {ls.name: load_list_file(ls.file, ls.type) for ls in rs.features.specs.lists}


def test_concurrent_clients_match_reference(engine, reference):
    schema, rs = reference
    conv = EventConverter(schema)
    errors: list[str] = []
    counts = {"binary": 0, "json": 0, "events": 0}
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = np.random.default_rng(1000 + k)
        with Client(engine.endpoint, schema, timeout_ms=20_000, retries=0, transport="binary") as cb, \
                Client(engine.endpoint, schema, timeout_ms=20_000, retries=0, transport="json") as cj:
            for i in range(REQUESTS):
                n = 1 if i % 4 else int(rng.integers(2, 9))
                recs = random_events(rng, schema, n)
                use_json = i % 3 == 0
                if use_json:
                    got = cj.evaluate_batch(conv.to_events(recs))
                else:
                    got = cb.evaluate_batch(recs)
                for rec, d in zip(recs, got):
                    action, score, fired = _expected(rs, rec)
                    if use_json:
                        names = set(d.rules) | set(d.shadow_rules)
                        want = {rs.rule_ids[j] for j in fired}
                    else:
                        names, want = set(d.rules), set(rs.slot_fired(fired))
                    flags = ("FIRED_OVERFLOW",) if len(fired) > 16 and not use_json else ()
                    if d.action != action or abs(d.score - score) > 1e-9 or names != want \
                            or tuple(d.flags) != flags:
                        with lock:
                            errors.append(f"{rec}: got {d}, want {action} {score} {sorted(want)}")
                with lock:
                    counts["json" if use_json else "binary"] += 1
                    counts["events"] += n

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], f"{len(errors)} wrong decisions, first: {errors[:3]}"
    assert counts["binary"] + counts["json"] == CLIENTS * REQUESTS
    assert counts["json"] > 0 and counts["binary"] > 0


def _raw(engine, frames: list[bytes], dealer: bool = False) -> list[bytes]:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER if dealer else zmq.REQ)
    s.linger = 0
    s.connect(engine.endpoint)
    try:
        s.send_multipart(frames)
        assert s.poll(10_000), "no reply"
        return s.recv_multipart()
    finally:
        s.close(0)


def _full_event(schema, **over) -> dict:
    ev = EventConverter(schema).to_events(random_events(np.random.default_rng(3), schema, 1))[0]
    ev.update(over)
    return ev


@pytest.mark.parametrize("make,code", [
    (lambda s: b"{not json", "BAD_JSON"),
    (lambda s: {"request_id": 3, "event": _full_event(s, nope=2)}, "UNKNOWN_FIELD"),
    (lambda s: {"request_id": 3, "event": {"account_id": 1}}, "MISSING_FIELD"),
    (lambda s: {"request_id": 4, "event": _full_event(s, account_id=-1)}, "OUT_OF_RANGE"),
    (lambda s: {"request_id": 4, "event": _full_event(s, amount="12")}, "BAD_FIELD"),
    (lambda s: {"request_id": 5, "events": []}, "BAD_COUNT"),
])
def test_bad_json_gets_error_and_engine_keeps_serving(engine, reference, make, code):
    schema, rs = reference
    body = make(schema)
    rep = json.loads(_raw(engine, [body if isinstance(body, bytes) else json.dumps(body).encode()])[0])
    assert rep["error"]["code"] == code
    with Client(engine.endpoint, schema, timeout_ms=10_000, retries=0) as c:
        rec = random_events(np.random.default_rng(7), schema, 1)
        assert c.evaluate_batch(rec)[0].action == _expected(rs, rec[0])[0]


def test_dealer_extra_frames_get_bad_frame(engine):
    rep = _raw(engine, [b"", b"part1", b"part2"], dealer=True)
    assert rep[0] == b""
    body = rep[-1]
    from ingress.wire import unpack_reply
    from shm.types import ErrorCode
    assert unpack_reply(body)[1] == ErrorCode.BAD_FRAME


def test_status_lists_processes(engine):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--instance", engine.instance],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for role in ("supervisor", "ingress", "worker 0", "worker 1"):
        assert role in out.stdout
    for pid in engine.children():
        assert str(pid) in out.stdout


@pytest.mark.slow    # two engine starts, 45-90 s; test_crash_recovery's engine kill checks the same reclaim in make test
def test_sigkill_then_restart_reclaims_stale_segments(tmp_path):
    eng = EngineProcess(tmp_path, workers=1, metrics=False).start()
    stale = shm_entries(eng.instance)
    eng.kill()                                   # the whole process group, no clean-up
    assert stale and shm_entries(eng.instance) == stale
    eng2 = EngineProcess(tmp_path, workers=1, metrics=False)
    eng2.instance, eng2.port = eng.instance, eng.port
    eng2.raw["instance"] = eng.instance
    import yaml
    eng2.config_path.write_text(yaml.safe_dump({**eng2.raw, "instance": eng.instance}, sort_keys=False))
    with eng2:
        now = shm_entries(eng.instance)
        assert not set(stale) & set(now), "stale segments of the dead instance survived"
        assert "reclaimed" in eng2.output()


def _binary_cases(schema):
    from ingress import wire
    rec = random_events(np.random.default_rng(4), schema, 2)
    good = wire.pack_request(schema.hash, rec, 1, 9)
    nan = rec.copy()
    nan["amount"][1] = np.nan
    return [
        (b"XXXX" + good[4:], "BAD_MAGIC"),
        (good[:4] + (9).to_bytes(2, "little") + good[6:], "BAD_VERSION"),
        (wire.pack_request(schema.hash ^ 1, rec, 1, 9), "SCHEMA_MISMATCH"),
        (good[:-1], "BAD_LENGTH"),
        (wire.pack_request(schema.hash, rec[:0], 1, 9), "BAD_COUNT"),
        (wire.pack_request(schema.hash, np.zeros(4097, schema.dtype), 1, 9), "BAD_COUNT"),
        (good + bytes(1 << 20), "FRAME_TOO_LARGE"),
        (wire.pack_request(schema.hash, nan, 1, 9), "NON_FINITE"),
        (wire.pack_request(schema.hash, rec, 1, 9, flags=0x80), "BAD_FLAGS"),
    ]


def test_bad_binary_requests_get_their_codes(engine, reference):
    from shm.types import ErrorCode
    from ingress import wire
    schema, rs = reference
    for frame, code in _binary_cases(schema):
        rid, err, dec, msg = wire.unpack_reply(_raw(engine, [frame])[0])
        assert ErrorCode(err).name == code, (code, msg)
        assert dec is None and msg
    with Client(engine.endpoint, schema, timeout_ms=10_000, retries=0) as c:   # still serving
        rec = random_events(np.random.default_rng(8), schema, 3)
        assert [d.action for d in c.evaluate_batch(rec)] == [_expected(rs, r)[0] for r in rec]
