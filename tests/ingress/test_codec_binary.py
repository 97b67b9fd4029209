"""Binary request decoding: round trip and one test per rejected input, each asserting its code."""
import struct

import numpy as np
import pytest
import zmq

from shm.types import ErrorCode
from ingress import wire
from ingress.wire import WireError
from tests.ingress.wire_helpers import MAX_BATCH, MAX_FRAME, SCHEMA, make_codec, records

CODEC = make_codec()


def frame(recs=None, **over) -> bytearray:
    recs = records(3) if recs is None else recs
    f = bytearray(wire.pack_request(SCHEMA.hash, recs, client_id=11, request_id=99,
                                    deadline_us=2500))
    head = np.frombuffer(f, wire.REQUEST_HEADER_DTYPE, 1)   # writable view of the header
    for name, value in over.items():
        head[name] = value
    return f


def code_of(f) -> WireError:
    with pytest.raises(WireError) as ei:
        CODEC.decode(bytes(f))
    return ei.value


def test_round_trip_keeps_header_and_records():
    recs = records(5)
    req = CODEC.decode(bytes(frame(recs)))
    assert (req.kind, req.request_id, req.client_id, req.deadline_us, req.flags) == \
        ("binary", 99, 11, 2500, 0)
    assert req.deadline_ms == 2.5
    assert req.records.dtype == SCHEMA.dtype and req.records.flags.c_contiguous
    assert req.records.tobytes() == recs.tobytes()


def test_records_do_not_alias_the_frame():
    f = frame()
    req = CODEC.decode(f)
    before = req.records.tobytes()     # (a structured .copy() need not copy padding bytes)
    f[wire.REQUEST_HEADER_SIZE:] = bytes(len(f) - wire.REQUEST_HEADER_SIZE)
    assert req.records.tobytes() == before


def test_accepts_memoryview_and_zmq_frame():
    f = bytes(frame())
    assert CODEC.decode(memoryview(f)).request_id == 99
    assert CODEC.decode(zmq.Frame(f).buffer).request_id == 99


def test_retry_flag_is_accepted():
    assert CODEC.decode(bytes(frame(flags=int(wire.HeaderFlag.RETRY)))).flags == 1


def test_empty_frame_is_bad_frame():
    assert code_of(b"").code == ErrorCode.BAD_FRAME


def test_wrong_magic():
    e = code_of(frame(magic=0x12345678))
    assert e.code == ErrorCode.BAD_MAGIC and e.request_id is None
    assert code_of(b"RS").code == ErrorCode.BAD_MAGIC


def test_short_header_is_bad_length():
    assert code_of(bytes(frame())[:wire.REQUEST_HEADER_SIZE - 1]).code == ErrorCode.BAD_LENGTH


def test_wrong_version():
    e = code_of(frame(version=2))
    assert e.code == ErrorCode.BAD_VERSION and e.request_id == 99


def test_unknown_flag_bits():
    assert code_of(frame(flags=0x0100)).code == ErrorCode.BAD_FLAGS
    assert code_of(frame(flags=0x8001)).code == ErrorCode.BAD_FLAGS


def test_schema_hash_mismatch():
    e = code_of(frame(schema_hash=SCHEMA.hash ^ 1))
    assert e.code == ErrorCode.SCHEMA_MISMATCH and e.request_id == 99


def test_count_zero():
    assert code_of(frame(records(1)[:0], count=0)).code == ErrorCode.BAD_COUNT


def test_count_over_max_batch():
    assert code_of(frame(records(MAX_BATCH + 1))).code == ErrorCode.BAD_COUNT
    assert CODEC.decode(bytes(frame(records(MAX_BATCH)))).records.size == MAX_BATCH


def test_body_not_a_multiple_of_record_size():
    f = frame()
    assert code_of(f + b"\0").code == ErrorCode.BAD_LENGTH
    assert code_of(f[:-1]).code == ErrorCode.BAD_LENGTH


def test_count_disagrees_with_body():
    assert code_of(frame(records(3), count=2)).code == ErrorCode.BAD_LENGTH
    assert code_of(frame(records(3), count=4)).code == ErrorCode.BAD_LENGTH


def test_frame_over_max_frame_bytes():
    f = bytes(frame()) + bytes(MAX_FRAME)
    e = code_of(f)
    assert e.code == ErrorCode.FRAME_TOO_LARGE and e.kind == "binary"


@pytest.mark.parametrize("n", [1, 4])          # the single-event fast path and the vector path
@pytest.mark.parametrize("field", ["x_f32", "y_f64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_in_any_record(n, field, bad):
    recs = records(n)
    recs[field][n - 1] = bad
    e = code_of(frame(recs))
    assert e.code == ErrorCode.NON_FINITE and f"events[{n - 1}].{field}" in e.message


def test_nan_payload_bits_are_caught():
    recs = records(2)
    raw = recs.view(np.uint8).reshape(2, -1)
    off = SCHEMA.dtype.fields["y_f64"][1]
    raw[1, off:off + 8] = np.frombuffer(struct.pack("<Q", 0xFFF0000000000001), np.uint8)
    assert code_of(frame(recs)).code == ErrorCode.NON_FINITE


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("byte", [2, 255])
def test_bool_byte_other_than_0_or_1(n, byte):
    recs = records(n)
    recs.view(np.uint8).reshape(n, -1)[n - 1, SCHEMA.dtype.fields["flag"][1]] = byte
    e = code_of(frame(recs))
    assert e.code == ErrorCode.OUT_OF_RANGE and f"events[{n - 1}].flag" in e.message


def test_schema_without_float_or_bool_fields():
    from shm.schema import Schema
    from ingress.codec import Codec
    s = Schema.build({"id": "u64", "tag": "bytes3"}, "id")
    recs = np.zeros(2, s.dtype)
    recs["id"] = [1, 2]
    c = Codec(s, 8, 1024)
    for n in (1, 2):
        got = c.decode(wire.pack_request(s.hash, recs[:n], 1, 2)).records
        assert got.tobytes() == recs[:n].tobytes()


def test_extreme_finite_values_pass():
    recs = records(2)
    recs["x_f32"] = np.finfo(np.float32).max
    recs["y_f64"] = -np.finfo(np.float64).max
    assert CODEC.decode(bytes(frame(recs))).records.tobytes() == recs.tobytes()
