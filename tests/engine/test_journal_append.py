"""The compiled append (shm.journal_append: 8 records sealed side by side, one call per batch)
against a slow reference of the record it must write: batches of 1, 63, 64, 65 and one across
a segment boundary, through both the library path (append_batch) and the worker's
(try_append_slots). The existing reader must return exactly the reference's records and
sequence numbers, the segment files must hold exactly its bytes, and a flipped byte must be
reported. Real files in a tmp dir."""
import numpy as np
import pytest

from engine.journal import (HEADER_SIZE, JournalConfig, JournalCorruptError, JournalReader,
                            JournalWriter, journal_dtype, list_segments)
from shm.schema import Schema
from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype
from tests.engine.test_journal import ref_hash

SCHEMA = Schema.build({"account_id": "u64", "amount": "f64", "country": "bytes2", "ok": "bool"},
                      "account_id")
DT = journal_dtype(SCHEMA.dtype)
RS = DT.itemsize
SEG_RECORDS = 150
# 1 + 63 + 64 = 128 records, then 65 crosses into the second segment at 150 (22 + 43), then
# 71 more, the last batch ending in a group of 7: every group length (1, 7, 8 full groups, a
# tail of 1), a split batch, and nothing written past the last record
SIZES = (1, 63, 64, 65, 71)


def sealed(recs: np.ndarray, first_seq: int) -> np.ndarray:
    """What the writer must store for ``recs``: the same words, seq first_seq.. in word 0,
    the check in the last word (the row-by-row append before the compiled one did exactly
    this)."""
    out = np.frombuffer(bytearray(recs.tobytes()), recs.dtype)   # (.copy() drops padding bytes)
    words = out.view(np.uint64).reshape(len(out), -1)
    for i in range(len(out)):
        words[i, 0] = first_seq + i
        words[i, -1] = ref_hash(words[i].tobytes())
    return out


def from_slots(req: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """The record of each (request slot, response slot) pair, field by field: the slots'
    token, padding, nfired and fired never reach it (zeros there)."""
    out = np.zeros(len(req), DT)
    for name in ("arrival_ns", "client_id", "request_id"):
        out[name] = req[name]
    for name in SCHEMA.dtype.names:
        out["event"][name] = req["event"][name]
    for name in ("score", "generation", "action", "flags"):
        out[name] = resp[name]
    return out


def random_records(rng, n: int, dtype: np.dtype) -> np.ndarray:
    """Every byte random: seq, check, padding included (the writer must overwrite or zero them)."""
    return np.frombuffer(rng.bytes(n * dtype.itemsize), dtype).copy()


def open_writer(d) -> JournalWriter:
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + SEG_RECORDS * RS, fsync="none")
    return JournalWriter(str(d), SCHEMA.dtype, SCHEMA.hash, 0, cfg)


def record_bytes(d) -> bytes:
    """The record area of every segment, oldest first (each segment's header cut off)."""
    return b"".join(open(p, "rb").read()[HEADER_SIZE:] for _, p in list_segments(str(d), 0))


def write(d, path: str, seed: int = 7) -> np.ndarray:
    """Append SIZES through ``path``; returns the reference records (sealed, seq 1..)."""
    rng = np.random.default_rng(seed)
    want = []
    with open_writer(d) as w:
        for n in SIZES:
            first = w.next_seq
            if path.startswith("batch"):
                recs = random_records(rng, n, DT)
                assert w.append_batch(as_passed(recs, path)) == (first, first + n - 1)
                want.append(sealed(recs, first))
            else:
                req = random_records(rng, n, request_slot_dtype(SCHEMA.dtype))
                resp = random_records(rng, n, RESPONSE_SLOT_DTYPE)
                assert w.try_reserve(n)
                assert w.try_append_slots(req.view(np.uint64), req.dtype.itemsize // 8,
                                          resp.view(np.uint64).reshape(n, -1), n) == n
                want.append(sealed(from_slots(req, resp), first))
        assert w.rotations == 1 and w.records_appended == sum(SIZES)
    # (by bytes: np.concatenate copies fields only, and append_batch keeps padding bytes)
    return np.frombuffer(b"".join(x.tobytes() for x in want), DT)


def as_passed(recs: np.ndarray, path: str) -> np.ndarray:
    """``recs`` as append_batch's caller passes them: as made (its compiled entry point);
    at an odd address (numpy calls it aligned; the entry point refuses it and the
    dispatched kernel appends); or under an equal dtype that is another object (the entry
    point too: the check is equality, not identity)."""
    if path == "batch_unaligned":
        buf = bytearray(1 + recs.nbytes)
        buf[1:] = recs.tobytes()
        return np.frombuffer(buf, DT, offset=1)
    if path == "batch_equal_dtype":
        other = np.dtype({"names": list(DT.names), "formats": [DT.fields[k][0] for k in DT.names],
                          "offsets": [DT.fields[k][1] for k in DT.names], "itemsize": DT.itemsize})
        assert other == DT and other is not DT
        return recs.view(other)
    return recs


@pytest.mark.parametrize("path", ["batch", "batch_unaligned", "batch_equal_dtype", "slots"])
def test_compiled_append_writes_the_reference_records_and_the_reader_returns_them(tmp_path, path):
    want = write(tmp_path, path)
    r = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0)
    got = r.read_all()
    assert r.torn is None and not r.corrupt
    assert got["seq"].tolist() == list(range(1, sum(SIZES) + 1))
    assert got.tobytes() == want.tobytes()
    # the files, bit for bit: the records where they belong, zeros after the last one
    area = record_bytes(tmp_path)
    assert area[:len(want) * RS] == want.tobytes()
    assert not any(area[len(want) * RS:])


@pytest.mark.parametrize("row", [0, 70, 149, 150, 180])
def test_a_flipped_byte_in_a_compiled_append_record_is_reported(tmp_path, row):
    """Rows in every position of a sealed group (lane 0, 6, the last one of a segment, the
    first of the next); the flip is in the event, so only the check can catch it."""
    want = write(tmp_path, "batch")
    seg = row // SEG_RECORDS
    path = list_segments(str(tmp_path), 0)[seg][1]
    off = HEADER_SIZE + (row % SEG_RECORDS) * RS + DT.fields["event"][1] + 3
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ 0x10]))
    with pytest.raises(JournalCorruptError) as e:
        JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
    assert f"{path}: offset={HEADER_SIZE + (row % SEG_RECORDS) * RS} " in str(e.value)
    r = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0, skip_corrupt=True)
    got = r.read_all()
    assert [(c.seq, c.count) for c in r.corrupt] == [(row + 1, 1)]
    assert got.tobytes() == want[:row].tobytes() + want[row + 1:].tobytes()


def test_a_flipped_byte_in_the_last_record_is_a_torn_tail(tmp_path):
    want = write(tmp_path, "slots")
    path = list_segments(str(tmp_path), 0)[-1][1]
    last = len(want) - 1 - SEG_RECORDS
    off = HEADER_SIZE + last * RS + RS - 1                 # the check word's top byte
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ 0x01]))
    r = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0)
    got = r.read_all()
    assert r.torn is not None and r.torn.seq == len(want) and r.torn.offset == HEADER_SIZE + last * RS
    assert got.tobytes() == want[:-1].tobytes()
