"""The general path's compiled pieces (ingress._batch_kernels) against plain-Python oracles:
which records reach which ring slot with which token, how drained responses split into runs
and fill their requests, and the N-decision reply as the wire decoder reads it."""
import numpy as np
import pytest

from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype
from ingress import _batch_kernels as BK
from ingress import wire
from ingress.codec import value_checks
from ingress.dedup import i64_bits
from shm import _ring_kernels as RK
from shm import layout as L
from shm.tokens import FAST_BIT, INDEX_BITS
from tests.ingress.test_fastpath import CODEC, expected_decisions, random_slots
from tests.ingress.wire_helpers import SCHEMA, records

SLOT_DT = request_slot_dtype(SCHEMA.dtype)
EV_OFF = SLOT_DT.fields["event"][1]


def ring(cap: int):
    hdr = np.zeros(L.HEADER_WORDS, np.int64)
    RK._init_header(hdr, cap, SLOT_DT.itemsize, 1, L.LAYOUT_VERSION, L.MAGIC)
    return hdr, np.full((cap, SLOT_DT.itemsize), 0xEE, np.uint8)    # garbage to overwrite


def test_first_bad_record_finds_the_first_bad_one():
    recs = records(9)
    checks = value_checks(SCHEMA)
    assert BK.first_bad_record(recs.view(np.uint8), 9, SCHEMA.record_size, checks) == -1
    recs["y_f64"][6] = np.nan
    recs.view(np.uint8).reshape(9, -1)[4, SCHEMA.dtype.fields["flag"][1]] = 3
    assert BK.first_bad_record(recs.view(np.uint8), 9, SCHEMA.record_size, checks) == 4


@pytest.mark.parametrize("n_workers", [1, 3])
def test_stage_writes_each_workers_records_in_order(n_workers):
    rng = np.random.default_rng(1)
    n = 40
    recs = records(n)
    widx = rng.integers(0, n_workers, n).astype(np.intp) if n_workers > 1 else np.zeros(0, np.intp)
    token0, now = 77 << INDEX_BITS, 123_456_789
    cid, rid = 2**64 - 3, 2**63 + 5                   # u64 ids above int64: their bit patterns
    for w in range(n_workers):
        hdr, slots = ring(64)
        hdr[L.PRODUCER_POSITION_WORD] = hdr[L.CONSUMER_POSITION_WORD] = \
            hdr[L.PRODUCER_CACHED_CONSUMER_WORD] = 50           # the claim wraps
        mine = [i for i in range(n) if not len(widx) or widx[i] == w]
        assert BK.stage(recs.view(np.uint8), n, SCHEMA.record_size, widx, w, hdr, slots, 64,
                        EV_OFF, token0, now, i64_bits(cid), i64_bits(rid)) in (0, 1)
        assert hdr[L.PRODUCER_POSITION_WORD] == 50 + len(mine)
        got = slots.view(SLOT_DT).reshape(-1)
        for j, i in enumerate(mine):
            s = got[(50 + j) % 64]
            assert (int(s["token"]), int(s["arrival_ns"])) == (token0 + i, now)
            assert (int(s["client_id"]), int(s["request_id"])) == (cid, rid)
            assert s["event"].tobytes() == recs[i].tobytes()
            assert not slots[(50 + j) % 64, EV_OFF + SCHEMA.record_size:].any()   # padding zeroed


def test_stage_refuses_what_does_not_fit_and_writes_nothing():
    hdr, slots = ring(8)
    before = slots.copy()
    assert BK.stage(records(9).view(np.uint8), 9, SCHEMA.record_size, np.zeros(0, np.intp), 0,
                    hdr, slots, 8, EV_OFF, 0, 1, 0, 0) == -1
    assert hdr[L.PRODUCER_POSITION_WORD] == 0 and np.array_equal(slots, before)


def response_ring(tokens, cap=16, start=0):
    """Ring bytes holding ``tokens`` from position ``start``, each slot's score = its order."""
    r = np.zeros(cap, RESPONSE_SLOT_DTYPE)
    for j, t in enumerate(tokens):
        r[(start + j) % cap]["token"] = t
        r[(start + j) % cap]["score"] = j
        r[(start + j) % cap]["generation"] = 1
    return r.view(np.uint8).reshape(cap, -1)


def test_runs_split_by_request_and_skip_the_fast_paths_slots():
    tok = lambda seq, i: (seq << INDEX_BITS) | i            # noqa: E731
    fast = FAST_BIT | 5
    tokens = [tok(3, 0), tok(3, 1), tok(4, 0), fast, tok(4, 1), tok(4, 2), tok(3, 2), tok(9, 0)]
    out = np.zeros((16, 3), np.int64)
    k = BK.runs(response_ring(tokens, start=12), 12, len(tokens), out)
    assert out[:k].tolist() == [[0, 2, 3], [2, 3, 4], [4, 6, 4], [6, 7, 3], [7, 8, 9]]


def test_file_run_fills_rows_once():
    tokens = [(1 << INDEX_BITS) | i for i in (2, 0, 2, 7)]   # 2 twice; 7 is out of range
    rb = response_ring(tokens, start=14)
    raw = np.zeros((3, RESPONSE_SLOT_DTYPE.itemsize), np.uint8)
    assert BK.file_run(rb, 14, 0, 4, raw) == 2
    got = raw.view(RESPONSE_SLOT_DTYPE).reshape(-1)
    assert got["score"].tolist() == [1.0, 0.0, 0.0]             # the first answer for row 2 stays
    assert got["generation"].tolist() == [1, 0, 1]


def test_reply_of_n_decisions_reads_as_the_protocol_says():
    rng = np.random.default_rng(11)
    for n in (1, 2, 64, 300):
        s = random_slots(rng, n)
        rid = int(rng.integers(0, 2 ** 64, dtype=np.uint64))
        out = np.zeros(wire.REPLY_HEADER_SIZE + n * wire.DECISION_SIZE, np.uint8)
        BK.encode_replies(s.view(np.uint8).reshape(n, -1), out, i64_bits(rid), CODEC.flag_errors)
        got_rid, err, dec, _ = wire.unpack_reply(out.tobytes())
        assert (got_rid, err, len(dec)) == (rid, 0, n)
        for name, want in expected_decisions(s).items():
            assert np.array_equal(dec[name], want), name


def test_count_actions():
    s = np.zeros(7, RESPONSE_SLOT_DTYPE)
    s["action"] = [0, 2, 2, 1, 2, 9, 0]                       # 9: not an action, not counted
    counts = np.zeros(3, np.int64)
    BK.count_actions(s.view(np.uint8).reshape(7, -1), counts)
    assert counts.tolist() == [2, 1, 3]
