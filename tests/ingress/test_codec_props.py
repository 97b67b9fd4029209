"""Property tests: encode/decode round trips for random records over a schema with every type."""
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shm.types import MAX_FIRED, RESPONSE_SLOT_DTYPE
from ingress import wire
from ingress.codec import RulesetMeta
from tests.ingress.wire_helpers import MAX_BATCH, SCHEMA, make_codec

CODEC = make_codec()
SETTINGS = settings(max_examples=150, deadline=None)


def _value(f):
    if f.kind in ("uint", "int"):
        return st.integers(f.lo, f.hi)
    if f.kind == "bool":
        return st.booleans()
    if f.kind == "float":
        if f.size == 4:
            return st.floats(width=32, allow_nan=False, allow_infinity=False)
        return st.floats(allow_nan=False, allow_infinity=False)
    # bytesN: text of at most N UTF-8 bytes, no NUL (trailing NULs are stripped by design)
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                   max_size=f.size).filter(lambda s, n=f.size: len(s.encode()) <= n)


EVENT = st.fixed_dictionaries({f.name: _value(f) for f in SCHEMA.fields})
EVENTS = st.lists(EVENT, min_size=1, max_size=8)
IDS = st.integers(0, 2 ** 64 - 1)


@SETTINGS
@given(EVENTS, IDS, IDS, st.integers(0, 2 ** 32 - 1), st.sampled_from([0, 1]))
def test_binary_round_trip(events, cid, rid, deadline_us, flags):
    recs = CODEC.events.to_records(events)
    req = CODEC.decode(wire.pack_request(SCHEMA.hash, recs, cid, rid, deadline_us, flags))
    assert (req.kind, req.client_id, req.request_id, req.deadline_us, req.flags) == \
        ("binary", cid, rid, deadline_us, flags)
    assert req.records.tobytes() == recs.tobytes()
    assert CODEC.events.to_events(req.records) == CODEC.events.to_events(recs)


@SETTINGS
@given(EVENTS, IDS, IDS)
def test_json_round_trip(events, cid, rid):
    frame = json.dumps({"request_id": rid, "client_id": cid, "events": events}).encode()
    req = CODEC.decode(frame)
    assert (req.kind, req.client_id, req.request_id) == ("json", cid, rid)
    back = CODEC.events.to_events(req.records)
    for ev, got in zip(events, back):
        for f in SCHEMA.fields:
            want = ev[f.name]
            if f.type == "f32":
                want = float(np.float32(want))
            assert got[f.name] == want, f.name
    # the canonical events decode to the same bytes again (binary and JSON agree)
    again = CODEC.decode(json.dumps({"request_id": rid, "events": back}).encode())
    assert again.records.tobytes() == req.records.tobytes()


SLOT = st.tuples(st.integers(0, 2), st.integers(0, 63), st.integers(0, 40),
                 st.floats(allow_nan=False, allow_infinity=False), st.integers(1, 2))


@SETTINGS
@given(st.lists(SLOT, min_size=1, max_size=MAX_BATCH))
def test_reply_round_trip(rows):
    n = len(rows)
    s = np.zeros(n, RESPONSE_SLOT_DTYPE)
    s["action"], s["flags"], s["nfired"], s["score"], s["generation"] = map(list, zip(*rows))
    for i in range(n):
        k = min(int(s["nfired"][i]), MAX_FIRED)
        s["fired"][i, :k] = np.arange(k) * 2
    recs = np.zeros(n, SCHEMA.dtype)
    req = CODEC.decode(wire.pack_request(SCHEMA.hash, recs, 1, 2))
    _, _, dec, _ = wire.unpack_reply(CODEC.encode_reply(req, s))
    for name in ("action", "nfired", "generation", "score", "fired"):
        assert np.array_equal(dec[name], s[name])
    overflow = (s["nfired"] > MAX_FIRED).astype(np.uint8)
    assert np.array_equal(dec["flags"], s["flags"] | overflow)
    # a decision encoded alone has the same bytes as in a batch reply
    multi = CODEC.encode_reply(req, s)
    one = CODEC.decode(wire.pack_request(SCHEMA.hash, recs[:1], 1, 2))
    for i in range(n):
        body = CODEC.encode_reply(one, s[i:i + 1])[wire.REPLY_HEADER_SIZE:]
        start = wire.REPLY_HEADER_SIZE + i * wire.DECISION_SIZE
        assert body == multi[start:start + wire.DECISION_SIZE]
    meta = RulesetMeta(1, "r@1", tuple(f"r{i}" for i in range(40)),
                       tuple("shadow" if i % 3 == 0 else "enforce" for i in range(40)))
    req.kind = "json"
    out = json.loads(CODEC.encode_reply(req, s, meta))["decisions"]
    for d, row, fired in zip(out, rows, s["fired"].tolist()):
        k = min(row[2], MAX_FIRED)
        names = [f"r{i}" for i in fired[:k]] if row[4] == 1 else [f"#{i}" for i in fired[:k]]
        assert sorted(d["rules"] + d["shadow_rules"]) == sorted(names)
        assert d["score"] == row[3] and ("flags" in d) == bool(row[1] or row[2] > MAX_FIRED)


WEIRD = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                  st.text(max_size=70), st.just(2 ** 64), st.just(-2 ** 63 - 1),
                  st.just(10 ** 400), st.just(2.0 ** 128 - 2.0 ** 103), st.lists(st.integers(), max_size=2))
FLOAT_EDGE = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e39, -3.5e38,
                               2.0 ** 128 - 2.0 ** 103, 2 ** 1024, 1e308])


@st.composite
def maybe_bad_event(draw):
    """A valid event with zero to two fields replaced by odd values (one fault at a time is
    what reaches the later checks of a path)."""
    ev = draw(EVENT)
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(SCHEMA.names))
        ev[name] = draw(st.one_of(WEIRD, FLOAT_EDGE))
    return ev


MAYBE_BAD_EVENT = maybe_bad_event()


@settings(max_examples=400, deadline=None)
@given(MAYBE_BAD_EVENT)
def test_single_event_fast_path_agrees_with_column_checks(ev):
    """The N = 1 fast path accepts exactly what the batch path accepts, with the same bytes."""
    from ingress.wire import WireError

    def outcome(events):
        try:
            return "ok", CODEC.events.to_records(events)[0].tobytes()
        except WireError as e:
            return e.code, e.message

    assert outcome([ev]) == outcome([ev, ev])
