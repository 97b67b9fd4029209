"""Reply encoding (binary and JSON), error replies, and the ROUTER envelope split."""
import json

import numpy as np
import pytest

from shm.types import MAX_FIRED, RESPONSE_SLOT_DTYPE, DecisionFlag, ErrorCode
from ingress import wire
from ingress.codec import RulesetMeta, split_envelope
from ingress.wire import WireError
from tests.ingress.wire_helpers import SCHEMA, event, make_codec, records

CODEC = make_codec()
META = RulesetMeta(7, "payments@3", ("r0", "r1", "r2"), ("enforce", "shadow", "enforce"))


def slots(n: int) -> np.ndarray:
    s = np.zeros(n, RESPONSE_SLOT_DTYPE)
    s["token"] = np.arange(n) + 1000
    s["action"] = np.arange(n) % 3
    s["score"] = np.arange(n) * 10.5
    s["generation"] = 7
    s["nfired"] = np.arange(n) % 4
    for i in range(n):
        s["fired"][i, :s["nfired"][i]] = np.arange(s["nfired"][i])
    return s


def binary_request(n: int):
    return CODEC.decode(wire.pack_request(SCHEMA.hash, records(n), 1, 42))


def json_request(n: int):
    return CODEC.decode(json.dumps({"request_id": 42, "events": [event(i) for i in range(n)]})
                        .encode())


def test_binary_reply_copies_every_column():
    s = slots(6)
    s["flags"][1] = DecisionFlag.DEFAULT_TIMEOUT
    s["flags"][2] = DecisionFlag.DEFAULT_OVERLOAD | DecisionFlag.EVAL_ERROR
    s["flags"][3] = DecisionFlag.DEFAULT_WORKER_LOST
    rid, error, dec, msg = wire.unpack_reply(CODEC.encode_reply(binary_request(6), s))
    assert (rid, error, msg) == (42, 0, "")
    for name in ("action", "flags", "nfired", "generation", "score", "fired"):
        assert np.array_equal(dec[name], s[name]), name
    assert dec["error"].tolist() == [0, ErrorCode.TIMEOUT, ErrorCode.OVERLOADED,
                                     ErrorCode.WORKER_LOST, 0, 0]


def test_binary_reply_flags_fired_overflow():
    s = slots(2)
    s["nfired"][1] = MAX_FIRED + 3
    _, _, dec, _ = wire.unpack_reply(CODEC.encode_reply(binary_request(2), s))
    assert dec["flags"].tolist() == [0, DecisionFlag.FIRED_OVERFLOW]
    assert dec["nfired"][1] == MAX_FIRED + 3


def test_json_reply_names_rules_by_mode_and_ruleset():
    s = slots(4)
    s["flags"][3] = DecisionFlag.DEFAULT_TIMEOUT
    out = json.loads(CODEC.encode_reply(json_request(4), s, {7: META}))
    assert out["request_id"] == 42
    d = out["decisions"]
    assert [x["action"] for x in d] == ["allow", "review", "block", "allow"]
    assert [x["score"] for x in d] == [0.0, 10.5, 21.0, 31.5]
    assert d[2] == {"action": "block", "score": 21.0, "rules": ["r0"], "shadow_rules": ["r1"],
                    "nfired": 2, "ruleset": "payments@3"}
    assert d[3]["rules"] == ["r0", "r2"] and d[3]["shadow_rules"] == ["r1"]
    assert d[3]["flags"] == ["DEFAULT_TIMEOUT"] and d[3]["error"] == "TIMEOUT"
    assert all("flags" not in x for x in d[:3])


def test_json_reply_with_unknown_generation_or_single_meta():
    s = slots(3)
    s["generation"][2] = 9
    d = json.loads(CODEC.encode_reply(json_request(3), s, META))["decisions"]
    assert d[1]["ruleset"] == "payments@3"
    assert d[2]["ruleset"] == "generation:9" and d[2]["rules"] == ["#0", "#1"]


def test_json_reply_overflow_flag():
    s = slots(1)
    s["nfired"] = MAX_FIRED + 1
    d = json.loads(CODEC.encode_reply(json_request(1), s, {}))["decisions"][0]
    assert "FIRED_OVERFLOW" in d["flags"] and len(d["rules"]) == MAX_FIRED and d["nfired"] == MAX_FIRED + 1


def test_json_reply_lists_every_fired_rule_when_given_the_full_list():
    """The worker's fired ring gives the ingress every index: no cap, no overflow flag."""
    s = slots(1)
    s["nfired"] = 20
    meta = RulesetMeta(7, "big@1", tuple(f"r{k}" for k in range(20)),
                       tuple("shadow" if k in (0, 1) else "enforce" for k in range(20)))
    d = json.loads(CODEC.encode_reply(json_request(1), s, meta, {0: list(range(20))}))["decisions"][0]
    assert d["rules"] == [f"r{k}" for k in range(2, 20)] and d["shadow_rules"] == ["r0", "r1"]
    assert d["nfired"] == 20 and "flags" not in d


def test_reply_needs_one_slot_per_record():
    with pytest.raises(ValueError, match="2 slots for 3 records"):
        CODEC.encode_reply(binary_request(3), slots(2))


def test_error_replies():
    out = json.loads(CODEC.encode_error("json", None, ErrorCode.BAD_JSON, "bad"))
    assert out == {"request_id": None, "error": {"code": "BAD_JSON", "message": "bad"}}
    b = CODEC.encode_error("binary", 9, ErrorCode.SCHEMA_MISMATCH, "é" * 600)
    rid, error, dec, msg = wire.unpack_reply(b)
    assert (rid, error, dec) == (9, ErrorCode.SCHEMA_MISMATCH, None)
    assert len(msg.encode()) <= wire.MAX_ERROR_MESSAGE_BYTES and msg.startswith("é")


def test_error_reply_from_wire_error():
    with pytest.raises(WireError) as ei:
        CODEC.decode(b'{"request_id": 3, "event": 1}')
    assert json.loads(CODEC.error_reply(ei.value))["error"]["code"] == "BAD_JSON"


def test_ruleset_meta_is_validated():
    with pytest.raises(ValueError, match="mode"):
        RulesetMeta(1, "x@1", ("a",), ("observe",))
    with pytest.raises(ValueError, match="rule_ids"):
        RulesetMeta(1, "x@1", ("a", "b"), ("enforce",))


@pytest.mark.parametrize("frames,env,body", [
    ([b"id", b"", b"body"], [b"id", b""], b"body"),      # REQ, or DEALER with delimiter
    ([b"id", b"body"], [b"id"], b"body"),                # DEALER without delimiter
])
def test_envelope_shapes_served(frames, env, body):
    assert split_envelope(frames) == (env, body)


@pytest.mark.parametrize("frames,env,kind", [
    ([b"id"], [b"id"], "binary"),                        # no body
    ([b"id", b""], [b"id"], "binary"),                   # empty body, no delimiter
    ([b"id", b"", b""], [b"id", b""], "binary"),         # empty body after delimiter
    ([b"id", b"", b"{", b"x"], [b"id", b""], "json"),    # extra frame after body
    ([b"id", b"a", b"b"], [b"id"], "binary"),            # two body frames, no delimiter
    ([b"id", b"", b"", b"x"], [b"id", b""], "binary"),
])
def test_missing_or_extra_frames(frames, env, kind):
    with pytest.raises(WireError) as ei:
        split_envelope(frames)
    e = ei.value
    assert (e.code, e.envelope, e.kind) == (ErrorCode.BAD_FRAME, env, kind)
