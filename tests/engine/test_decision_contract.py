"""Issue 20 against a real engine: what a decision tells its caller (every fired rule,
idempotency conflicts, error replies a client can match, the documented messages)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from shm.runtime.config import load_config
from shm.types import ErrorCode
from ingress import wire
from ingress.client import Client
from ingress.jsonevents import EventConverter
from bench.engine_proc import EngineProcess

N_EXTRA = 80                     # rules that fire only for amount > 100


def _rules_text() -> str:
    rules = ["  - {id: s%d, when: 'amount > 0', action: block, score: 50, mode: shadow}" % k for k in range(2)]
    rules += ["  - {id: a%d, when: 'amount > 0', score: %d}" % (k, 1 + (k == 13)) for k in range(14)]
    rules += ["  - {id: r0, when: 'amount > 0', action: review, score: 5}"]
    rules += ["  - {id: b%d, when: 'amount > 0', action: block}" % k for k in range(3)]
    rules += ["  - {id: x%d, when: 'amount > 100'}" % k for k in range(N_EXTRA)]
    rules += ["  - {id: kp, when: \"country == b'KP'\", action: block, score: 100}"]
    rules += ["  - {id: t0, when: 'amount == -7', score: 60}",          # review by threshold only
              "  - {id: t_shadow, when: 'amount == -7', action: block, score: 100, mode: shadow}",
              "  - {id: off, when: 'amount == -7', action: block, score: 100, enabled: false}"]
    return "ruleset: many\nversion: 3\nrules:\n" + "\n".join(rules) + "\n"


@pytest.fixture(scope="module")
def rules_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("contract-rules") / "many.yaml"
    p.write_text(_rules_text())
    return p


@pytest.fixture(scope="module")
def engine(tmp_path_factory, rules_path):
    with EngineProcess(tmp_path_factory.mktemp("contract"), workers=1,
                       overrides={"rules": {"files": [str(rules_path)], "thresholds": {"review": 50, "block": 80},
                                            "on_error": "skip"},
                                  "ingress": {"default_deadline_ms": 10_000}}) as eng:
        yield eng


@pytest.fixture(scope="module")
def ruleset(rules_path):
    from rules import compile_ruleset
    return compile_ruleset([str(rules_path)], load_config().schema, thresholds={"review": 50, "block": 80})


def _events(schema, amounts, country=b"FR"):
    ev = np.zeros(len(amounts), schema.dtype)
    ev["amount"] = amounts
    ev["country"] = country
    ev["account_id"] = np.arange(1, len(amounts) + 1)
    ev["currency"] = b"EUR"
    return ev


def test_json_lists_every_fired_rule_and_binary_keeps_the_blocking_ones(engine, ruleset):
    """Defect 1: 20 and 100 rules fire. JSON lists every one (enforce and shadow) with a
    count; binary keeps the rules that set the action in its 16 slots, nfired exact."""
    schema = load_config().schema
    ev = _events(schema, [1.0, 1000.0, 1.0])
    ev["amount"][2] = 0.0                         # nothing fires
    with Client(engine.endpoint, schema, timeout_ms=20_000, retries=0, transport="json") as cj, \
            Client(engine.endpoint, schema, timeout_ms=20_000, retries=0, transport="binary") as cb:
        got_json = cj.evaluate_batch(EventConverter(schema).to_events(ev))
        got_bin = cb.evaluate_batch(ev)
    for i, d in enumerate(got_json):
        ref = ruleset.reference_decision(ev[i])
        want = {ruleset.rule_ids[k] for k in ref.fired}
        assert set(d.rules) | set(d.shadow_rules) == want and len(d.rules) + len(d.shadow_rules) == len(want)
        assert set(d.shadow_rules) == ({"s0", "s1"} if want else set())
        assert d.nfired == len(want) and "FIRED_OVERFLOW" not in d.flags
        assert d.action == ("block" if want else "allow")
    assert got_json[1].nfired == 100 and {"b0", "b1", "b2", "r0"} <= set(got_json[1].rules)
    for i, d in enumerate(got_bin):
        ref = ruleset.reference_decision(ev[i])
        assert d.nfired == len(ref.fired)
        assert list(d.rules) == ruleset.slot_fired(ref.fired)
        assert ("FIRED_OVERFLOW" in d.flags) == (len(ref.fired) > 16)
        if ref.fired:
            assert {ruleset.index_of(b) for b in ("b0", "b1", "b2", "r0")} <= set(d.rules)
            assert not {ruleset.index_of(s) for s in ("s0", "s1")} & set(d.rules)


def _rpc(engine, frame: bytes, timeout_ms: int = 20_000) -> bytes:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(engine.endpoint)
    try:
        s.send(frame)
        assert s.poll(timeout_ms, zmq.POLLIN), "no reply"
        return s.recv()
    finally:
        s.close()


def _binary(schema, ev, cid: int, rid: int) -> bytes:
    return wire.pack_request(schema.hash, ev, cid, rid)


def test_decision_meaning_documented_in_protocol(engine, ruleset):
    """Defect 6, checked on a real engine: indexes are the enabled rules in file order (the
    disabled one has none), the ruleset label, the score leaves out shadow rules and the
    action comes from rules.thresholds when no rule sets it."""
    schema = load_config().schema
    assert ruleset.rule_ids[:2] == ("s0", "s1") and ruleset.rule_ids[-2:] == ("t0", "t_shadow")
    assert "off" not in ruleset.rule_ids and ruleset.label == "many@3"
    ev = _events(schema, [-7.0, 1.0])
    with Client(engine.endpoint, schema, timeout_ms=20_000, retries=0, transport="json") as cj, \
            Client(engine.endpoint, schema, timeout_ms=20_000, retries=0, transport="binary") as cb:
        j = cj.evaluate_batch(EventConverter(schema).to_events(ev))
        b = cb.evaluate_batch(ev)
    assert (j[0].action, j[0].score, j[0].rules, j[0].shadow_rules) == ("review", 60.0, ("t0",), ("t_shadow",))
    assert j[0].ruleset == "many@3" and b[0].generation == 1
    assert b[0].rules == (ruleset.index_of("t0"), ruleset.index_of("t_shadow"))
    assert j[1].score == 13 * 1 + 2 + 5 and j[1].action == "block"     # s0, s1 (50 each) left out


def test_a_reused_request_id_with_other_events_is_refused(engine):
    """Defect 2: same (client_id, request_id), another record (a KP payment): refused with
    IDEMPOTENCY_CONFLICT, never answered with the earlier decision; an identical retry still
    gets the first decision (DUPLICATE). One event (fast path), a batch and JSON."""
    schema = load_config().schema
    cid = 0x5EED0000_00000001
    for n, rid in ((1, 5), (3, 6)):
        order = _events(schema, [0.0] * n)
        kp = _events(schema, [0.0] * n, country=b"KP")
        first = wire.unpack_reply(_rpc(engine, _binary(schema, order, cid, rid)))
        assert first[1] == 0 and (first[2]["action"] == 0).all()
        rid_back, code, dec, msg = wire.unpack_reply(_rpc(engine, _binary(schema, kp, cid, rid)))
        assert (rid_back, code, dec) == (rid, ErrorCode.IDEMPOTENCY_CONFLICT, None) and "other events" in msg
        other_size = _events(schema, [0.0] * (n + 1))
        assert wire.unpack_reply(_rpc(engine, _binary(schema, other_size, cid, rid)))[1] == ErrorCode.IDEMPOTENCY_CONFLICT
        again = wire.unpack_reply(_rpc(engine, _binary(schema, order, cid, rid)))
        assert again[1] == 0 and (again[2]["flags"] & 16).all()
        assert (again[2]["action"] == first[2]["action"]).all()
    conv = EventConverter(schema)
    ev = conv.to_events(_events(schema, [0.0]))[0]
    req = {"request_id": 9, "client_id": cid, "event": ev}
    got = json.loads(_rpc(engine, json.dumps(req).encode()))
    assert got["decisions"][0]["action"] == "allow"
    bad = json.loads(_rpc(engine, json.dumps({**req, "event": {**ev, "country": "KP"}}).encode()))
    assert bad == {"request_id": 9, "error": {"code": "IDEMPOTENCY_CONFLICT",
                                              "message": "request_id already used by this client_id for other events"}}
    dup = json.loads(_rpc(engine, json.dumps(req).encode()))["decisions"][0]
    assert dup["action"] == "allow" and dup["flags"] == ["DUPLICATE"]
    # client_id 0 is never deduplicated: the same ids decide each record afresh
    kp0 = wire.unpack_reply(_rpc(engine, _binary(schema, _events(schema, [0.0], country=b"KP"), 0, 5)))
    ok0 = wire.unpack_reply(_rpc(engine, _binary(schema, _events(schema, [0.0]), 0, 5)))
    assert kp0[2]["action"][0] == 2 and ok0[2]["action"][0] == 0 and not ok0[2]["flags"][0] & 16


def test_a_conflicting_retry_while_the_first_is_in_flight(engine):
    """A DEALER sends the first request and, at once, a conflicting and an identical copy:
    whether the first is still in flight or decided when they arrive, the conflicting one is
    refused and the identical one gets the first decision."""
    schema = load_config().schema
    cid = 0x5EED0000_00000002
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(engine.endpoint)
    try:
        for n, rid in ((1, 1), (4, 2)):
            order, kp = _events(schema, [0.0] * n), _events(schema, [0.0] * n, country=b"KP")
            for ev in (order, kp, order):
                d.send_multipart([b"", _binary(schema, ev, cid, rid)])
            replies = []
            for _ in range(3):
                assert d.poll(20_000, zmq.POLLIN)
                replies.append(wire.unpack_reply(d.recv_multipart()[-1]))
            codes = sorted(r[1] for r in replies)
            assert codes == [0, 0, ErrorCode.IDEMPOTENCY_CONFLICT] and all(r[0] == rid for r in replies)
            decided = [r[2] for r in replies if r[1] == 0]
            assert all((x["action"] == 0).all() for x in decided)
            assert sorted(int(x["flags"][0] & 16) for x in decided) == [0, 16]
    finally:
        d.close()


def test_frame_errors_carry_the_request_id_when_readable(engine):
    """Defect 3: FRAME_TOO_LARGE and BAD_FRAME carried request_id 0 although the header (or
    the JSON object) was readable: a DEALER client could not match the reply."""
    schema = load_config().schema
    ev = _events(schema, [0.0])
    big = _binary(schema, ev, 1, 4242) + bytes(1 << 20)            # over max_frame_bytes
    rid, code, _, msg = wire.unpack_reply(_rpc(engine, big))
    assert (rid, code) == (4242, 2) and "max_frame_bytes" in msg
    conv = EventConverter(schema)
    events = conv.to_events(_events(schema, [0.0] * 6000))
    got = json.loads(_rpc(engine, json.dumps({"request_id": 4243, "events": events}).encode()))
    assert got["request_id"] == 4243 and got["error"]["code"] == "FRAME_TOO_LARGE"
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(engine.endpoint)
    try:
        d.send_multipart([b"", _binary(schema, ev, 1, 4244), b"extra"])     # a frame too many
        assert d.poll(20_000, zmq.POLLIN)
        rid, code, _, _ = wire.unpack_reply(d.recv_multipart()[-1])
        assert (rid, code) == (4244, 1)
        d.send_multipart([b"", b'{"request_id": 4245, "event": {}}', b"extra"])
        assert d.poll(20_000, zmq.POLLIN)
        got = json.loads(d.recv_multipart()[-1])
        assert got["request_id"] == 4245 and got["error"]["code"] == "BAD_FRAME"
        d.send_multipart([b"", b"RSKQ" + bytes(20), b"extra"])             # header cut short
        assert d.poll(20_000, zmq.POLLIN)
        assert wire.unpack_reply(d.recv_multipart()[-1])[:2] == (0, 1)
    finally:
        d.close()


def _worker_pid(engine) -> int:
    import psutil
    pids = [p for p in engine.children()                  # procname: not the standby
            if " ".join(psutil.Process(p).cmdline()).strip() == "risk-engine: worker 0"]
    assert len(pids) == 1, pids
    return pids[0]


def test_overloaded_and_conflict_messages_are_the_documented_formats(tmp_path, rules_path, engine):
    """Defect 4, the codes only an engine produces: OVERLOADED for each cause, provoked for
    real (a ring of 16 slots and a batch of 17; a stopped worker with max_inflight=2 and
    max_inflight_per_peer=1; a worker whose queued event waited over half the deadline), the
    router's own BAD_FRAME, and IDEMPOTENCY_CONFLICT;
    each whole message must match a documented format of its code."""
    import os
    import signal
    from ingress.replies import SHED_MESSAGE
    from tests.ingress.test_protocol_doc import unmatched
    schema = load_config().schema
    cid = 0x5EED0000_00000003
    assert wire.unpack_reply(_rpc(engine, _binary(schema, _events(schema, [0.0]), cid, 1)))[1] == 0
    conflict = wire.unpack_reply(_rpc(engine, _binary(schema, _events(schema, [0.0], b"KP"), cid, 1)))
    assert conflict[1] == ErrorCode.IDEMPOTENCY_CONFLICT and unmatched("IDEMPOTENCY_CONFLICT", [conflict[3]]) == ([], [])
    overloaded = []
    with EngineProcess(tmp_path, workers=1, overrides={
            "rules": {"files": [str(rules_path)]}, "rings": {"capacity": 16},
            "ingress": {"default_deadline_ms": 2000, "max_inflight": 2,
                        "max_inflight_per_peer": 1}}) as eng:
        rid, code, _, msg = wire.unpack_reply(_rpc(eng, _binary(schema, _events(schema, [0.0] * 17), 0, 1)))
        assert (rid, code) == (1, 14)
        overloaded.append(msg)
        worker = _worker_pid(eng)
        os.kill(worker, signal.SIGSTOP)
        socks = []
        for _ in range(3):
            s = zmq.Context.instance().socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(eng.endpoint)
            socks.append(s)
        d, d2, d3 = socks
        try:
            replies = {}
            # 2 waits for the stopped worker; 3 is one too many for its connection (per peer);
            # 6, from another connection, waits too; 7 is one too many for the engine
            sent_2 = time.monotonic()
            for s, rid in ((d, 2), (d, 3), (d2, 6), (d3, 7)):
                s.send_multipart([b"", _binary(schema, _events(schema, [0.0]), 0, rid)])
                if rid in (3, 7):
                    assert s.poll(20_000, zmq.POLLIN)
                    r = wire.unpack_reply(s.recv_multipart()[-1])
                    replies[r[0]] = r
            for s in (d, d2):
                assert s.poll(20_000, zmq.POLLIN)
                r = wire.unpack_reply(s.recv_multipart()[-1])
                replies[r[0]] = r
            assert replies[3][1] == replies[7][1] == 14
            assert "max_inflight_per_peer" in replies[3][3] and "max_inflight=" in replies[7][3]
            assert replies[2][1] == replies[6][1] == 0 and replies[2][2]["error"][0] == 15
            dflt = replies[2][2][0]                # a default decision: generation 0, score 0
            assert (dflt["generation"], dflt["score"], dflt["nfired"], dflt["action"]) == (0, 0.0, 0, 2)
            overloaded += [replies[3][3], replies[7][3]]
            # request 2 still sits in the stopped worker's ring: once it is older than two
            # deadlines the worker is stuck, not stalled, and new work for it is refused
            time.sleep(max(0.0, sent_2 + 2 * 2.0 + 0.2 - time.monotonic()))
            rid, code, _, msg = wire.unpack_reply(_rpc(eng, _binary(schema, _events(schema, [0.0]), 0, 4)))
            assert (rid, code) == (4, 14)
            overloaded.append(msg)
            # the router's own BAD_FRAME: a message of more frames than it keeps, its id read
            d.send_multipart([b"", _binary(schema, _events(schema, [0.0]), 0, 5), *[b"x"] * 8])
            assert d.poll(20_000, zmq.POLLIN)
            rid, code, _, msg = wire.unpack_reply(d.recv_multipart()[-1])
            assert (rid, code) == (5, ErrorCode.BAD_FRAME)
            assert unmatched("BAD_FRAME", [msg])[0] == [] and msg.startswith("a message of 11 frames"), msg
        finally:
            os.kill(worker, signal.SIGCONT)
            for s in socks:
                s.close()
    # the shed reply is a prepared constant the router sends as is (cheapest refusal)
    bad, unused = unmatched("OVERLOADED", overloaded + [SHED_MESSAGE])
    assert not bad and not unused, (bad, unused, overloaded)


def test_a_json_retry_of_an_overflowed_decision_lists_every_rule(engine, ruleset):
    """The first decision came from the workers with 100 fired rules; its retry, answered
    from the idempotency window, lists all of them too (DUPLICATE, no FIRED_OVERFLOW)."""
    schema = load_config().schema
    ev = EventConverter(schema).to_events(_events(schema, [1000.0]))[0]
    req = json.dumps({"request_id": 77, "client_id": 0x5EED0000_00000004, "event": ev}).encode()
    first = json.loads(_rpc(engine, req))["decisions"][0]
    again = json.loads(_rpc(engine, req))["decisions"][0]
    assert first["nfired"] == again["nfired"] == 100 and "flags" not in first
    assert again["flags"] == ["DUPLICATE"]
    assert (again["rules"], again["shadow_rules"]) == (first["rules"], first["shadow_rules"])
    assert len(first["rules"]) + len(first["shadow_rules"]) == 100
