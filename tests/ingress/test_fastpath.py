"""The ingress fast path's compiled pieces against the general path they stand in for: the
reply bytes, the value checks and the shard choice must be exactly the codec's and
``shard_of``'s (the engine-level behaviour is covered by tests/engine through real sockets)."""
import numpy as np
import pytest

from shm.schema import Schema
from shm.types import MAX_FIRED, RESPONSE_SLOT_DTYPE, DecisionFlag, ErrorCode
from ingress import _fast_kernels as K
from ingress import wire
from ingress.dedup import i64_bits
from ingress.codec import value_checks
from ingress.admission import Shards, shard_of
from ingress.wire import WireError
from tests.ingress.wire_helpers import SCHEMA, make_codec, records

CODEC = make_codec()


def random_slots(rng, n):
    s = np.zeros(n, RESPONSE_SLOT_DTYPE)
    s["token"] = rng.integers(0, 2 ** 63, n)
    s["action"] = rng.integers(0, 3, n)
    s["flags"] = rng.integers(0, 64, n)
    s["nfired"] = rng.choice([0, 1, 5, MAX_FIRED, MAX_FIRED + 1, 300], n)
    s["fired"] = rng.integers(0, 2 ** 16, (n, MAX_FIRED))
    s["generation"] = rng.integers(0, 2 ** 32, n)
    s["score"] = rng.normal(0, 1e6, n)
    s["error"] = rng.integers(0, 20, n)
    return s


def expected_decisions(s: np.ndarray) -> dict:
    """What the protocol says a reply carries for response slots ``s`` (docs/PROTOCOL.md):
    the oracle the encoders are checked against (the wire decoder reads their bytes)."""
    flag_errors = CODEC.flag_errors
    flags = s["flags"] | (s["nfired"] > MAX_FIRED).astype(np.uint8)
    return {"action": s["action"], "flags": flags, "error": flag_errors[s["flags"]],
            "nfired": s["nfired"], "generation": s["generation"], "score": s["score"],
            "fired": s["fired"]}


def test_one_decision_reply_reads_as_the_protocol_says():
    rng = np.random.default_rng(7)
    out = np.zeros(K.REPLY_BYTES, np.uint8)
    req = CODEC.decode(wire.pack_request(SCHEMA.hash, records(1), 1, 0))
    for s in random_slots(rng, 400):
        rid = int(rng.integers(0, 2 ** 63)) * 2 + 1       # the top bit set half of the time
        one = np.array([s], RESPONSE_SLOT_DTYPE)
        K.encode_reply(one.view(np.uint8), out, np.int64(i64_bits(rid)), CODEC.flag_errors)
        got_rid, err, dec, _ = wire.unpack_reply(out.tobytes())
        assert (got_rid, err, len(dec)) == (rid, 0, 1)
        for name, want in expected_decisions(one).items():
            assert np.array_equal(dec[name], want), (name, s)
        req.request_id = rid
        assert out.tobytes() == CODEC.encode_reply(req, one)     # the general path's bytes


def test_default_decision_reads_as_the_general_paths():
    d = np.full(K.SLOT_BYTES, 0xAB, np.uint8)
    K.default_decision(d, 2, int(DecisionFlag.DEFAULT_TIMEOUT), int(ErrorCode.TIMEOUT))
    s = d.view(RESPONSE_SLOT_DTYPE)[0]
    assert (s["action"], s["flags"], s["error"], s["generation"], s["score"], s["nfired"]) == \
        (2, DecisionFlag.DEFAULT_TIMEOUT, ErrorCode.TIMEOUT, 0, 0.0, 0)


@pytest.mark.parametrize("field,bad", [("x_f32", np.nan), ("x_f32", np.inf), ("y_f64", -np.inf),
                                       ("y_f64", np.nan), ("flag", 2), ("flag", 255)])
def test_value_checks_refuse_what_the_codec_refuses(field, bad):
    checks = value_checks(SCHEMA)
    rec = records(1)
    frame = bytearray(wire.pack_request(SCHEMA.hash, rec, 1, 5))
    assert K.values_ok(np.frombuffer(bytes(frame), np.uint8), wire.REQUEST_HEADER_SIZE, checks)
    r = rec.copy()
    if field == "flag":
        r.view(np.uint8)[SCHEMA.dtype.fields["flag"][1]] = bad
    else:
        r[field] = bad
    frame = wire.pack_request(SCHEMA.hash, r, 1, 5)
    assert not K.values_ok(np.frombuffer(frame, np.uint8), wire.REQUEST_HEADER_SIZE, checks)
    with pytest.raises(WireError) as e:
        CODEC.decode(frame)
    assert e.value.code in (ErrorCode.NON_FINITE, ErrorCode.OUT_OF_RANGE)


def test_finite_extremes_pass():
    r = records(1)
    r["x_f32"] = np.finfo(np.float32).max
    r["y_f64"] = -np.finfo(np.float64).max
    frame = wire.pack_request(SCHEMA.hash, r, 1, 5)
    assert K.values_ok(np.frombuffer(frame, np.uint8), wire.REQUEST_HEADER_SIZE, value_checks(SCHEMA))
    CODEC.decode(frame)


@pytest.mark.parametrize("ktype", ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"])
@pytest.mark.parametrize("n_workers", [2, 3, 7])
def test_one_record_routes_as_shard_of(ktype, n_workers):
    schema = Schema.build({"pad": "u8", "k": ktype, "v": "f64"}, "k")
    rng = np.random.default_rng(3)
    recs = np.zeros(500, schema.dtype)
    info = np.iinfo(recs["k"].dtype)
    recs["k"] = rng.integers(info.min, info.max, 500, endpoint=True, dtype=recs["k"].dtype)
    shards = Shards(schema, n_workers)
    want = shard_of(recs["k"], n_workers)
    raw = recs.view(np.uint8).reshape(len(recs), -1)
    got = [shards.worker_of_record(raw[i].tobytes(), 0) for i in range(len(recs))]
    assert got == want.tolist()
