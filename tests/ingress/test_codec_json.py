"""JSON request decoding: round trip and one test per rejected input, each asserting its code."""
import json

import numpy as np
import pytest

from shm.types import ErrorCode
from ingress.wire import WireError
from tests.ingress.wire_helpers import MAX_BATCH, MAX_FRAME, SCHEMA, event, make_codec

CODEC = make_codec()


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def err(frame) -> WireError:
    with pytest.raises(WireError) as ei:
        CODEC.decode(frame)
    assert ei.value.kind == "json"
    return ei.value


def bad_event(**over) -> WireError:
    return err(js({"request_id": 5, "events": [event(0), event(1, **over)]}))


def test_single_event_round_trip():
    req = CODEC.decode(js({"request_id": 7, "event": event(3), "client_id": 2 ** 64 - 1,
                           "deadline_ms": 1.5}))
    assert (req.kind, req.request_id, req.client_id, req.deadline_us, req.flags) == \
        ("json", 7, 2 ** 64 - 1, 1500, 0)
    assert req.records.dtype == SCHEMA.dtype and req.records.size == 1
    assert CODEC.events.to_events(req.records) == [event(3)]


def test_events_keep_full_u64_i64_range_and_order():
    evs = [event(i, id=v, b_i64=w) for i, (v, w) in
           enumerate([(0, -2 ** 63), (2 ** 64 - 1, 2 ** 63 - 1), (2 ** 63, -1)])]
    req = CODEC.decode(js({"request_id": 0, "events": evs}))
    assert req.records["id"].tolist() == [0, 2 ** 64 - 1, 2 ** 63]
    assert req.records["b_i64"].tolist() == [-2 ** 63, 2 ** 63 - 1, -1]
    assert CODEC.events.to_events(req.records) == evs


def test_bytes_are_zero_padded_and_stripped_back():
    req = CODEC.decode(js({"request_id": 1, "event": event(name="ab")}))
    raw = req.records.view(np.uint8)
    off = SCHEMA.dtype.fields["name"][1]
    assert bytes(raw[off:off + 7]) == b"ab\0\0\0\0\0"
    assert CODEC.events.to_events(req.records)[0]["name"] == "ab"


def test_padding_bytes_are_zero():
    req = CODEC.decode(js({"request_id": 1, "events": [event(i) for i in range(3)]}))
    raw = req.records.view(np.uint8).reshape(3, -1)
    used = np.zeros(SCHEMA.record_size, bool)
    for name in SCHEMA.names:
        off = SCHEMA.dtype.fields[name][1]
        used[off:off + SCHEMA.dtype.fields[name][0].itemsize] = True
    assert not raw[:, ~used].any()


def test_f32_rounding_boundary():
    limit = 2.0 ** 128 - 2.0 ** 103            # the first value that rounds to inf in f32
    assert bad_event(x_f32=limit).code == ErrorCode.OUT_OF_RANGE
    below = float(np.nextafter(limit, 0))
    req = CODEC.decode(js({"request_id": 1, "event": event(x_f32=-below)}))
    assert req.records["x_f32"][0] == -np.finfo(np.float32).max


def test_floats_accept_integers():
    req = CODEC.decode(js({"request_id": 1, "event": event(y_f64=3, x_f32=-2)}))
    assert req.records["y_f64"][0] == 3.0 and req.records["x_f32"][0] == -2.0


@pytest.mark.parametrize("frame", [b"{", b"{\"request_id\": 1,}", b"{}}", b"{\xff\xfe}",
                                   b'{"request_id": 1, "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"])
def test_invalid_json(frame):
    e = err(frame)
    assert e.code == ErrorCode.BAD_JSON and e.request_id is None


def test_huge_integer_literal_is_bad_json_not_a_crash():
    assert err(b'{"request_id": ' + b"9" * 5000 + b"}").code == ErrorCode.BAD_JSON


@pytest.mark.parametrize("rid", [None, -1, 2 ** 64, "7", 1.0, True])
def test_request_id_missing_or_invalid(rid):
    obj = {"event": event()} if rid is None else {"request_id": rid, "event": event()}
    e = err(js(obj))
    assert e.code == ErrorCode.BAD_JSON and e.request_id is None


@pytest.mark.parametrize("obj", [
    {"request_id": 4, "event": {}, "events": []},           # both
    {"request_id": 4},                                     # neither
    {"request_id": 4, "events": {"a": 1}},                 # events not an array
    {"request_id": 4, "event": 3},                          # event not an object
    {"request_id": 4, "events": [event(), []]},             # element not an object
    {"request_id": 4, "event": {}, "extra": 1},             # unknown top-level key
    {"request_id": 4, "event": {}, "client_id": -1},
    {"request_id": 4, "event": {}, "deadline_ms": "5"},
    {"request_id": 4, "event": {}, "deadline_ms": -1},
])
def test_bad_shape_keeps_request_id(obj):
    e = err(js(obj))
    assert e.code == ErrorCode.BAD_JSON and e.request_id == 4


@pytest.mark.parametrize("dl", [2 ** 32, 4294968, 1e308, 10 ** 400])
def test_deadline_out_of_range(dl):
    # 1e308 was found by the fuzzer: 1e308 * 1000 overflowed to inf before the range check
    e = err(js({"request_id": 4, "event": event(), "deadline_ms": dl}))
    assert e.code == ErrorCode.OUT_OF_RANGE


def test_deadline_at_the_limit():
    assert CODEC.decode(js({"request_id": 4, "event": event(), "deadline_ms": 4294967})) \
        .deadline_us == 4294967000


def test_zero_events_and_too_many_events():
    assert err(js({"request_id": 4, "events": []})).code == ErrorCode.BAD_COUNT
    evs = [event(i) for i in range(MAX_BATCH + 1)]
    assert err(js({"request_id": 4, "events": evs})).code == ErrorCode.BAD_COUNT


def test_frame_over_max_frame_bytes():
    e = err(b"{" + b" " * MAX_FRAME + b"}")
    assert e.code == ErrorCode.FRAME_TOO_LARGE and e.request_id is None


def test_unknown_field():
    e = bad_event(colour="red")
    assert e.code == ErrorCode.UNKNOWN_FIELD and e.request_id == 5 and "events[1]" in e.message


def test_missing_field():
    ev = event(1)
    del ev["blob"]
    e = err(js({"request_id": 5, "events": [event(0), ev]}))
    assert e.code == ErrorCode.MISSING_FIELD and e.message == "events[1].blob: missing"


@pytest.mark.parametrize("field,value", [
    ("id", "1"), ("id", 1.0), ("id", True), ("id", None), ("a_u8", [1]),
    ("y_f64", "1.5"), ("y_f64", False), ("flag", 1), ("flag", "true"),
    ("name", 5), ("name", None), ("tag", ["a"]),
])
def test_wrong_json_type(field, value):
    e = bad_event(**{field: value})
    assert e.code == ErrorCode.BAD_FIELD and f"events[1].{field}" in e.message


def test_lone_surrogate_string_is_bad_field():
    frame = js({"request_id": 5, "event": event()}).replace(b'"Z"', b'"\\ud800"')
    assert err(frame).code == ErrorCode.BAD_FIELD


@pytest.mark.parametrize("field,value", [
    ("a_u8", 256), ("a_u8", -1), ("a_u16", 65536), ("a_u32", 2 ** 32), ("id", -1),
    ("id", 2 ** 64), ("b_i8", -129), ("b_i8", 128), ("b_i16", 2 ** 15), ("b_i32", -2 ** 31 - 1),
    ("b_i64", 2 ** 63), ("b_i64", -2 ** 63 - 1),
])
def test_integer_out_of_range(field, value):
    e = bad_event(**{field: value})
    assert e.code == ErrorCode.OUT_OF_RANGE and f"events[1].{field}" in e.message


@pytest.mark.parametrize("field,value", [("tag", "ab"), ("tag", "é"), ("name", "x" * 8),
                                         ("blob", "b" * 65)])
def test_string_too_long(field, value):
    assert bad_event(**{field: value}).code == ErrorCode.OUT_OF_RANGE


def test_float_out_of_range_for_f32_or_f64():
    assert bad_event(x_f32=1e39).code == ErrorCode.OUT_OF_RANGE
    assert bad_event(y_f64=10 ** 400).code == ErrorCode.OUT_OF_RANGE


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
@pytest.mark.parametrize("field", ["x_f32", "y_f64"])
def test_non_finite_float(literal, field):
    frame = js({"request_id": 5, "event": event(**{field: 0.125})})
    frame = frame.replace(f'"{field}": 0.125'.encode(), f'"{field}": '.encode() + literal)
    e = err(frame)
    assert e.code == ErrorCode.NON_FINITE and e.request_id == 5


@pytest.mark.parametrize("frame", [
    # two "event" keys: json's default keeps the last one silently (decided on FR, not KP)
    b'{"request_id": 5, "event": ' + js(event(name="KP")) + b', "event": ' + js(event(name="FR")) + b'}',
    b'{"request_id": 5, "request_id": 6, "event": ' + js(event()) + b'}',
    # inside an event, and inside an event of a batch
    js({"request_id": 5, "event": event()}).replace(b'"id": ', b'"id": 1, "id": '),
    js({"request_id": 5, "events": [event(0), event(1)]}).replace(b'"name": ', b'"name": "x", "name": ', 1),
])
def test_duplicate_keys_are_bad_json_at_every_level(frame):
    e = err(frame)
    assert e.code == ErrorCode.BAD_JSON and "duplicate key" in e.message, e.message


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-32-le"])
def test_utf16_and_utf32_bodies_are_bad_json(encoding):
    """PROTOCOL.md: UTF-8 only. json.loads on bytes guesses UTF-16/32 (first byte still '{'
    in little-endian), so these were decided as if they were UTF-8."""
    frame = json.dumps({"request_id": 5, "event": event()}).encode(encoding)
    assert frame[0] == ord("{")
    assert err(frame).code == ErrorCode.BAD_JSON


def test_utf8_encoded_surrogate_is_bad_json():
    """Strict UTF-8: CESU-style surrogate bytes (json's bytes path decodes with surrogatepass)."""
    frame = js({"request_id": 5, "event": event()}).replace(b'"Z"', b'"\xed\xa0\x80"')
    assert err(frame).code == ErrorCode.BAD_JSON


def test_non_ascii_utf8_is_still_accepted():
    frame = json.dumps({"request_id": 5, "event": event()}, ensure_ascii=False).encode()
    assert "été".encode() in frame
    assert CODEC.events.to_events(CODEC.decode(frame).records) == [event()]
