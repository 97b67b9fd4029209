"""Journal: round trips across segments, checksums against a reference, torn tails, corruption,
schema mismatch, retention and fsync policies. Real files in a tmp dir."""
import contextlib
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.journal import (HEADER_SIZE, JournalConfig, JournalCorruptError, JournalError,
                            JournalGapError, JournalReader, JournalWriter, checksum,
                            iter_merged, journal_dtype, list_segments, list_writers)
from shm.schema import Schema

SCHEMA = Schema.build({"account_id": "u64", "amount": "f64", "country": "bytes2", "ok": "bool"},
                      "account_id")
RS = journal_dtype(SCHEMA.dtype).itemsize
M64 = (1 << 64) - 1


def ref_hash(rec_bytes: bytes) -> int:
    """Slow reference of the record check word (oracle for the njit kernel)."""
    words = np.frombuffer(rec_bytes, np.uint64)[:-1].tolist()
    h = (0x9E3779B97F4A7C15 * (len(words) + 1)) & M64
    for w in words:
        h ^= w
        h = (h * 0xBF58476D1CE4E5B9) & M64
        h ^= h >> 32
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & M64
    h ^= h >> 31
    return h | 1


def writer(d, seg_records=50, fsync="none", **kw):
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + seg_records * RS, fsync=fsync, **kw)
    return JournalWriter(str(d), SCHEMA.dtype, SCHEMA.hash, 0, cfg)


def reader(d):
    return JournalReader(str(d), SCHEMA.dtype, SCHEMA.hash, 0)


def batch(w, n, start=0):
    b = w.empty_batch(n)
    k = np.arange(start, start + n)
    b["arrival_ns"] = k * 1000
    b["event"]["account_id"] = k
    b["event"]["amount"] = k * 0.5
    b["event"]["country"] = b"FR"
    b["event"]["ok"] = k % 2 == 0
    b["action"] = k % 3
    b["flags"] = k % 7
    b["score"] = k * 1.25
    b["generation"] = 9
    return b


def fill(d, sizes, **kw):
    with writer(d, **kw) as w:
        pos = 0
        for n in sizes:
            assert w.append_batch(batch(w, n, pos)) == (pos + 1, pos + n)
            pos += n
    return pos


def check_records(recs, first_seq=1):
    k = np.arange(first_seq - 1, first_seq - 1 + len(recs))
    assert (recs["seq"] == k + 1).all()
    assert (recs["event"]["account_id"] == k).all()
    assert (recs["event"]["amount"] == k * 0.5).all()
    assert (recs["event"]["country"] == b"FR").all()
    assert (recs["arrival_ns"] == k * 1000).all() and (recs["score"] == k * 1.25).all()
    assert (recs["action"] == k % 3).all() and (recs["flags"] == k % 7).all()
    assert (recs["generation"] == 9).all()


def corrupt(path, offset, data=b"\xff"):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_round_trip_across_segments_and_checksums_match_reference(tmp_path):
    n = fill(tmp_path, [1, 49, 50, 120, 3, 77])
    assert len(list_segments(str(tmp_path), 0)) == 6       # 300 records / 50 per segment
    r = reader(tmp_path)
    assert r.last_committed_seq() == 300 and reader(tmp_path / "absent").last_committed_seq() == 0
    recs = r.read_all()
    assert len(recs) == n == 300 and r.last_seq == 300 and r.torn is None
    check_records(recs)
    for i in (0, 1, 149, 299):
        assert int(recs["check"][i]) == ref_hash(recs[i:i + 1].view(np.uint8).tobytes())
    check_records(r.read_all(from_seq=123), 123)
    assert [len(b) for b in r.iter_batches(from_seq=40, batch_records=7)][:3] == [7, 4, 7]  # per segment


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 130), min_size=1, max_size=8), seg=st.integers(1, 60),
       start=st.integers(1, 400))
def test_round_trip_property(tmp_path_factory, sizes, seg, start):
    d = tmp_path_factory.mktemp("j")
    n = fill(d, sizes, seg_records=seg)
    r = reader(d)
    recs = r.read_all(from_seq=min(start, n))
    check_records(recs, min(start, n))
    assert r.last_seq == n and r.torn is None


def test_reopen_continues_sequence(tmp_path):
    fill(tmp_path, [30])
    with writer(tmp_path) as w:
        assert w.next_seq == 31
        assert w.append_batch(batch(w, 40, 30)) == (31, 70)
    check_records(reader(tmp_path).read_all())


@pytest.mark.parametrize("how", ["flip", "half", "garbage_then_zeros"])
def test_torn_tail_reported_then_repaired_by_writer(tmp_path, how):
    fill(tmp_path, [78])                                   # segments of 50 + 28
    last = list_segments(str(tmp_path), 0)[-1][1]
    off = HEADER_SIZE + 27 * RS                            # record seq 78, the last one
    if how == "flip":
        corrupt(last, off + 20)
    elif how == "half":
        corrupt(last, off + RS // 2, bytes(RS - RS // 2))  # second half of seq 78 never written
    else:
        corrupt(last, off, bytes(RS))                      # a zero record, then a half-written one
        corrupt(last, off + RS, b"\x01" * (RS // 2))
    r = reader(tmp_path)
    recs = r.read_all()
    assert r.last_seq == 77 and len(recs) == 77
    assert r.torn is not None and r.torn.path == last and r.torn.offset == off and r.torn.seq == 78
    with writer(tmp_path) as w:
        assert w.next_seq == 78 and w.torn_bytes_repaired > 0
        w.append_batch(batch(w, 5, 77))
    r = reader(tmp_path)
    check_records(r.read_all())
    assert r.last_seq == 82 and r.torn is None


def test_corrupt_record_in_middle_segment_raises_with_file_and_offset(tmp_path):
    fill(tmp_path, [140])
    mid = list_segments(str(tmp_path), 0)[1][1]
    off = HEADER_SIZE + 10 * RS
    corrupt(mid, off + 17)
    r = reader(tmp_path)
    with pytest.raises(JournalCorruptError) as e:
        r.read_all()
    assert mid in str(e.value) and f"offset={off}" in str(e.value) and "checksum" in str(e.value)
    check_records(r.read_all(from_seq=101), 101)           # later segments are still readable
    with pytest.raises(JournalCorruptError, match="seq=0 expected=61"):
        corrupt(mid, off, (0).to_bytes(8, "little"))
        r.read_all(from_seq=55)


@pytest.mark.parametrize("damage", ["flip", "zero"])
def test_a_bad_record_followed_by_intact_ones_is_corruption_never_a_tail(tmp_path, damage):
    """Issue 19, defect 6: one flipped bit 30 records from the end of the newest segment
    dropped (and the writer zero-filled) every later record. Now reading stops with the
    file, offset and seq; nothing is discarded; with skip_corrupt exactly that record is
    skipped; the reopening writer keeps every later record and continues after the last."""
    fill(tmp_path, [60, 60])                               # segments 1-50, 51-100, 101-120
    last = list_segments(str(tmp_path), 0)[-1][1]
    off = HEADER_SIZE + 9 * RS                             # seq 110: 10 intact records after it
    if damage == "flip":
        corrupt(last, off + 21, bytes([open(last, "rb").read()[off + 21] ^ 0x04]))
    else:
        corrupt(last, off, bytes(RS))
    with pytest.raises(JournalCorruptError) as e:
        reader(tmp_path).read_all()
    msg = str(e.value)
    assert last in msg and f"offset={off} seq=110:" in msg and "skip-corrupt-journal-records" in msg
    r = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0, skip_corrupt=True)
    recs = r.read_all()
    assert len(recs) == 119 and r.last_seq == 120 and r.torn is None
    assert [(c.path, c.offset, c.seq, c.count) for c in r.corrupt] == [(last, off, 110, 1)]
    check_records(recs[:109])
    check_records(recs[109:], 111)
    with writer(tmp_path) as w:                            # keeps 111..120, continues at 121
        assert w.next_seq == 121 and w.torn_bytes_repaired == 0
        assert [(c.seq, c.count) for c in w.corrupt] == [(110, 1)]
        w.append_batch(batch(w, 5, 120))
    r = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0, skip_corrupt=True)
    recs = r.read_all()
    assert len(recs) == 124 and r.last_seq == 125
    check_records(recs[109:], 111)


def test_the_reopening_writer_never_restarts_below_the_snapshot_floor(tmp_path):
    """A bad last record that a snapshot already counted (seq <= floor) is not a tail: the
    writer keeps its place and continues after the floor, so no sequence number is reused."""
    fill(tmp_path, [70])
    last = list_segments(str(tmp_path), 0)[-1][1]
    corrupt(last, HEADER_SIZE + 19 * RS + 30)              # seq 70, the newest record
    with writer(tmp_path) as w:                            # no floor: a torn tail, reused
        assert w.next_seq == 70
    corrupt(last, HEADER_SIZE + 19 * RS + 30)              # (the writer zeroed it: damage again)
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + 50 * RS, fsync="none")
    with JournalWriter(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0, cfg, seq_floor=70) as w:
        assert w.next_seq == 71 and [(c.seq, c.count) for c in w.corrupt] == [(70, 1)]
    with JournalWriter(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0, cfg, seq_floor=80) as w:
        assert w.next_seq == 81 and [(c.seq, c.count) for c in w.corrupt] == [(70, 11)]
    with pytest.raises(JournalError, match="ends at seq 100 but a snapshot counted seq 200"):
        JournalWriter(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0, cfg, seq_floor=200)


def test_missing_middle_segment_is_a_gap(tmp_path):
    fill(tmp_path, [140])
    segs = list_segments(str(tmp_path), 0)
    os.unlink(segs[1][1])
    with pytest.raises(JournalCorruptError, match="ends at seq 50"):
        reader(tmp_path).read_all()


@pytest.mark.parametrize("field,offset,match", [
    ("magic", 0, "bad magic"), ("crc", 40, "header checksum"), ("size", None, "file size")])
def test_bad_header_refused(tmp_path, field, offset, match):
    fill(tmp_path, [10])
    seg = list_segments(str(tmp_path), 0)[0][1]
    if offset is None:
        os.truncate(seg, HEADER_SIZE + 5 * RS)
    else:
        corrupt(seg, offset, b"X")
    with pytest.raises(JournalCorruptError, match=match):
        reader(tmp_path).read_all()


def test_wrong_schema_hash_refused(tmp_path):
    fill(tmp_path, [10])
    other = Schema.build({"account_id": "u64", "amount": "f64", "country": "bytes2", "flag": "bool"},
                         "account_id")
    assert other.dtype.itemsize == SCHEMA.dtype.itemsize and other.hash != SCHEMA.hash
    with pytest.raises(JournalCorruptError, match="schema_hash"):
        JournalReader(str(tmp_path), other.dtype, other.hash).read_all()
    with pytest.raises(JournalCorruptError, match="schema_hash"):
        JournalWriter(str(tmp_path), other.dtype, other.hash)
    writer(tmp_path).close()                               # the failed open released its lock
    with pytest.raises(ValueError, match="writer_id"):
        JournalWriter(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 1000)


def test_wrong_dtype_refused_on_append(tmp_path):
    with writer(tmp_path) as w:
        with pytest.raises(TypeError, match="journal dtype"):
            w.append_batch(np.zeros(3, SCHEMA.dtype))


def test_retention_max_files_respects_snapshot_floor(tmp_path):
    with writer(tmp_path, max_files=3) as w:
        w.append_batch(batch(w, 200))                      # 4 segments; 1 deleted at rotations
        firsts = [f for f, _ in list_segments(str(tmp_path), 0)]
        assert firsts == [51, 101, 151] and w.segments_deleted == 1
        w.set_snapshot_seq(120)                            # records >= 120 must be kept
        w.append_batch(batch(w, 200, 200))
        firsts = [f for f, _ in list_segments(str(tmp_path), 0)]
        assert firsts == [101, 151, 201, 251, 301, 351]
    r = reader(tmp_path)
    check_records(r.read_all(), 101)
    with pytest.raises(JournalGapError, match="starts at 101"):
        r.read_all(from_seq=5)


def test_retention_max_age(tmp_path):
    with writer(tmp_path, max_age_s=3600) as w:
        w.append_batch(batch(w, 100))
        old = list_segments(str(tmp_path), 0)[0][1]
        os.utime(old, (0, 0))                              # written in 1970
        w.append_batch(batch(w, 100, 100))                 # rotation is lazy: 151 is full, 201 unborn
        assert [f for f, _ in list_segments(str(tmp_path), 0)] == [51, 101, 151]


def test_fsync_policies_count_syncs(tmp_path):
    for policy in ("none", "batch", "interval_ms"):
        d = tmp_path / policy
        with writer(d, seg_records=1000, fsync=policy, interval_ms=5) as w:
            t0 = w._last_sync_ns
            for i in range(4):
                w.append_batch(batch(w, 10, 10 * i))
            synced = [w.maybe_sync(t0 + 1_000_000), w.maybe_sync(t0 + 6_000_000),
                      w.maybe_sync(t0 + 7_000_000)]
            if policy == "none":
                assert w.syncs == 0 and synced == [False] * 3
            elif policy == "batch":
                assert w.syncs == 4 and synced == [False] * 3
            else:
                assert synced == [False, True, False] and w.syncs == 1
        check_records(reader(d).read_all())


def test_second_writer_on_same_series_refused(tmp_path):
    with writer(tmp_path) as w:
        with pytest.raises(JournalError, match="writer_id=0 is already open"):
            writer(tmp_path)
        w.append_batch(batch(w, 3))
    with writer(tmp_path) as w:                            # released on close
        assert w.next_seq == 4


def test_on_idle_prepares_next_segment_and_stale_preparation_is_removed(tmp_path):
    with writer(tmp_path) as w:
        w.append_batch(batch(w, 21))
        steps = 0
        while w.on_idle(budget_bytes=1024):   # pre-faults the pages ahead and prepares the
            steps += 1                        # next segment (header, then 3,200 zero bytes)
        assert steps >= 3 and os.path.exists(tmp_path / "w000-00000000000000000051.rjl.tmp")
        assert not w.on_idle(budget_bytes=1024)              # prepared and sealed: nothing left
        check_records(reader(tmp_path).read_all())           # pre-faulting kept every record
        w.append_batch(batch(w, 9, 21))
        # its header is written when the file is made, ahead of the zero-fill and rotation
        from shm.journal_format import read_header
        hdr = read_header(str(tmp_path / "w000-00000000000000000051.rjl.tmp"), SCHEMA.hash, RS, 0)
        assert hdr.first_seq == 51 and hdr.capacity == 50
        w.append_batch(batch(w, 40, 30))                     # rotates into the prepared file
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        w.on_idle(budget_bytes=4096)                         # starts preparing seq 101's file
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]   # close drops it
    (tmp_path / "w000-00000000000000000101.rjl.tmp").write_bytes(b"crashed mid-preparation")
    with writer(tmp_path) as w:
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        w.append_batch(batch(w, 60, 70))
    r = reader(tmp_path)
    check_records(r.read_all())
    assert r.last_seq == 130 and r.torn is None


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 140), cut=st.floats(0, 1), kind=st.sampled_from(["truncate", "flip"]))
def test_damage_in_last_segment_keeps_exactly_the_prefix(tmp_path_factory, n, cut, kind):
    """Oracle: a kill or a bad sector in the newest segment loses the first record whose bytes
    changed and everything after it, nothing before; older segments are untouched."""
    d = tmp_path_factory.mktemp("j")
    with writer(d) as w:
        w.append_batch(batch(w, n))
        live = reader(d).read_all()                        # a reader beside the live writer
        assert len(live) == n and live["seq"][-1] == n
    first, last = list_segments(str(d), 0)[-1]
    used = n - (first - 1)                                 # records in the newest segment
    before = open(last, "rb").read()
    b = HEADER_SIZE + min(int(cut * used * RS), used * RS - 1)
    if kind == "truncate":                                 # bytes from b on never reached disk
        corrupt(last, b, bytes(len(before) - b))
    else:
        corrupt(last, b, bytes([before[b] ^ 0x5A]))        # always a different byte
    after = open(last, "rb").read()
    changed = [i for i in range(used) if before[HEADER_SIZE + i * RS:HEADER_SIZE + (i + 1) * RS]
               != after[HEADER_SIZE + i * RS:HEADER_SIZE + (i + 1) * RS]]
    kept = changed[0] if changed else used
    r = reader(d)
    if kept + 1 < used and kind == "flip":                 # intact records after it: corruption
        with pytest.raises(JournalCorruptError, match=f"offset={HEADER_SIZE + kept * RS} seq={first + kept}:"):
            r.read_all()
        r = JournalReader(str(d), SCHEMA.dtype, SCHEMA.hash, 0, skip_corrupt=True)
        recs = r.read_all()                                # exactly that record is skipped
        assert len(recs) == n - 1 and first + kept not in recs["seq"]
        assert [(c.seq, c.count) for c in r.corrupt] == [(first + kept, 1)] and r.torn is None
        return
    recs = r.read_all()
    check_records(recs)
    assert r.last_seq == first - 1 + kept == len(recs)
    assert (r.torn is None) == (not any(after[HEADER_SIZE + kept * RS:]))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 130), seed=st.integers(0, 2**32 - 1))
def test_append_slots_writes_the_records_append_columns_writes(tmp_path_factory, n, seed):
    """The worker's path (records straight from its ring slots, one compiled pass) and the
    staging path give byte-identical journals, across rotations (50-record segments), for
    slots whose every byte is random: the token, the slot padding and the response's
    nfired and fired must not leak into a record."""
    from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype
    rng = np.random.default_rng(seed)
    req = np.frombuffer(rng.bytes(n * request_slot_dtype(SCHEMA.dtype).itemsize),
                        request_slot_dtype(SCHEMA.dtype)).copy()
    resp = np.frombuffer(rng.bytes(n * RESPONSE_SLOT_DTYPE.itemsize), RESPONSE_SLOT_DTYPE).copy()
    a, b = tmp_path_factory.mktemp("slots"), tmp_path_factory.mktemp("columns")
    with writer(a) as wa, writer(b) as wb:
        k = 7                                               # two calls: a run that starts mid-way
        assert wa.append_slots(req[:k].view(np.uint64), req.dtype.itemsize // 8,
                               resp[:k].view(np.uint64).reshape(min(k, n), -1), min(k, n)) == (1, min(k, n))
        if n > k:
            wa.append_slots(req[k:].view(np.uint64), req.dtype.itemsize // 8,
                            resp[k:].view(np.uint64).reshape(n - k, -1), n - k)
        wb.append_columns(req["event"], req["arrival_ns"], resp["action"], resp["flags"],
                          resp["score"], resp["generation"], req["client_id"], req["request_id"])
    ra, rb = reader(a).read_all(), reader(b).read_all()
    assert len(ra) == n and ra.tobytes() == rb.tobytes()


def test_append_columns_and_several_writers_in_one_directory(tmp_path):
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + 50 * RS, fsync="none")
    ev = np.zeros(70, SCHEMA.dtype)
    ev["account_id"] = np.arange(70)
    ev["amount"] = np.arange(70) * 0.5
    ev["country"] = b"FR"
    with JournalWriter(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 3, cfg) as w3, \
            JournalWriter(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 12, cfg) as w12:
        k = np.arange(70)
        assert w3.append_columns(ev, k * 1000, k % 3, k % 7, k * 1.25, 9) == (1, 70)
        assert w12.append_columns(ev[:5], 0, 1, 0, 2.0, 1) == (1, 5)
    assert list_writers(str(tmp_path)) == [3, 12] and list_writers(str(tmp_path / "no")) == []
    recs = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 3).read_all()
    check_records(recs)
    other = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 12).read_all()
    assert len(other) == 5 and (other["action"] == 1).all() and (other["score"] == 2.0).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), nw=st.integers(1, 4), chunk=st.integers(1, 40))
def test_iter_merged_keeps_each_writer_in_order_and_interleaves_by_arrival(tmp_path_factory, seed,
                                                                          nw, chunk):
    rng = np.random.default_rng(seed)
    d = tmp_path_factory.mktemp("m")
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + 50 * RS, fsync="none")
    sent = {}
    for w in range(nw):
        n = int(rng.integers(0, 120))
        arr = np.cumsum(rng.integers(0, 100, n)) + rng.integers(-150, 1, n)   # mostly rising
        with JournalWriter(str(d), SCHEMA.dtype, SCHEMA.hash, w, cfg) as jw:
            b = jw.empty_batch(n)
            b["arrival_ns"] = arr
            b["event"]["account_id"] = w * 1000 + np.arange(n)
            if n:
                jw.append_batch(b)
        sent[w] = arr
    out = list(iter_merged(str(d), SCHEMA.dtype, SCHEMA.hash, batch_records=chunk))
    recs = [r for r, _ in out]
    wids = np.concatenate([w for _, w in out]) if out else np.zeros(0, np.int64)
    keys = []
    for w, arr in sent.items():                             # oracle: each writer's running max
        mine = np.concatenate([r["event"]["account_id"][ws == w] for r, ws in out]) if out else []
        assert list(mine) == list(w * 1000 + np.arange(len(arr)))
        keys.append(np.maximum.accumulate(arr) if len(arr) else arr)
    got = np.concatenate([r["arrival_ns"] for r in recs]) if recs else np.zeros(0)
    ids = np.concatenate([r["event"]["account_id"] for r in recs]) if recs else np.zeros(0)
    run_max = {w: k for w, k in zip(sent, keys)}
    key_of = np.array([run_max[i // 1000][i % 1000] for i in ids.astype(int)])
    assert (np.diff(key_of) >= 0).all() and len(got) == sum(len(a) for a in sent.values())
    for r in recs:
        assert (checksum(r) == r["check"]).all()            # byte copies kept records intact
    assert set(wids.tolist()) <= set(sent)


def test_retention_runs_again_once_a_rotations_successor_is_published(tmp_path):
    """Retention keeps the newest published segment while its successor is unpublished (that
    segment's header names the successor). A housekeeping round between a background rotation
    and its publication used to spend the rotation's retention then, and the segment it had
    to keep stayed past max_files until the next rotation."""
    with writer(tmp_path, seg_records=50, max_files=2) as w:
        w.background = True
        done = 0
        for _ in range(4):                              # four rotations, each published
            w.append_batch(batch(w, 50, done))
            done += 50
            w.publish_pending()
            w.housekeep()
        w.append_batch(batch(w, 50, done))              # a rotation, not yet published
        w.housekeep()                                   # its retention, with the successor unlisted
        w.publish_pending()
        w.housekeep()
        assert len(list_segments(str(tmp_path), 0)) <= 2


def test_housekeeping_from_a_second_thread_while_appending(tmp_path):
    """The worker's arrangement: the main thread appends (and rotates) while a housekeeping
    thread publishes the segments rotation switched to, pre-faults, prepares the next segment,
    unmaps rotated ones and applies retention (engine.journal_housekeeper). No record
    is lost or damaged, nothing is left over."""
    import threading
    stop = threading.Event()
    calls = [0]
    with writer(tmp_path, seg_records=4096, max_files=4) as w:   # pages span records
        w.background = True

        def keep():
            while not stop.is_set():
                w.publish_pending()
                w.housekeep(budget_bytes=64 << 10, prefault_bytes=64 << 10)
                calls[0] += 1

        t = threading.Thread(target=keep)
        t.start()
        try:
            done = 0
            while done < 40_000:                       # about 10 rotations, bounded
                w.append_batch(batch(w, 97, done))
                done += 97
        finally:
            stop.set()
            t.join(10)
        assert w.rotations >= 9 and calls[0] > 0
        w.publish_pending()                             # what the thread had not done yet
        w.housekeep()
        assert len(w._retired) == 0
        assert len(list_segments(str(tmp_path), 0)) <= 4   # retention ran off the append path
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    recs = reader(tmp_path).read_all()
    check_records(recs, int(recs["seq"][0]))
    assert recs["seq"][-1] == done


def tmp_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".tmp"))


def test_background_rotation_publishes_later_and_readers_see_every_record(tmp_path):
    """With a housekeeping thread, rotation maps the prepared successor (still .tmp) and
    leaves its publication to publish_pending; readers read through it meanwhile."""
    with writer(tmp_path, fsync="interval_ms") as w:
        w.background = True
        w.append_batch(batch(w, 70))                          # rotates at 50
        assert tmp_files(tmp_path) == ["w000-00000000000000000051.rjl.tmp"]
        assert len(list_segments(str(tmp_path), 0)) == 1 and w.publications == 0
        r = reader(tmp_path)
        check_records(r.read_all())
        assert r.last_seq == 70 and r.torn is None
        tail = r.read_all(from_seq=60)                       # from inside the successor
        check_records(tail, 60)
        assert len(tail) == 11 and r.last_seq == 70
        assert w.publish_pending() and not w.publish_pending()
        assert tmp_files(tmp_path) == [] and len(list_segments(str(tmp_path), 0)) == 2
        w.append_batch(batch(w, 130, 70))                     # behind by a whole segment: the
        assert w.publications == 2                            # next rotation publishes first
    assert tmp_files(tmp_path) == []                          # close publishes the last one
    check_records(reader(tmp_path).read_all())
    assert reader(tmp_path).last_committed_seq() == 200


@pytest.mark.parametrize("prepared", [True, False])
def test_a_background_rotation_leaves_every_fsync_to_the_housekeeping_thread(tmp_path, monkeypatch,
                                                                             prepared):
    """fsync=interval_ms with a housekeeping thread: the appending thread never fsyncs at a
    rotation, not even the successor's header when the thread has not made it durable yet
    (an fsync there held a worker for up to 926 ms under disk pressure). The thread fsyncs a
    successor it creates once, header only, before zero-filling it; its publication then
    fsyncs the predecessor (and the successor only if the appender had to make it), then
    renames."""
    import engine.journal as J
    synced = []
    real_fsync = os.fsync

    def fsync(fd):                       # the real call, with its file recorded
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)
    monkeypatch.setattr(J.os, "fsync", fsync)
    pred, succ = "w000-00000000000000000001.rjl", "w000-00000000000000000051.rjl.tmp"
    with writer(tmp_path, fsync="interval_ms") as w:
        w.background = True
        w.append_batch(batch(w, 30))
        if prepared:
            synced.clear()
            w.housekeep(1 << 10)                              # creates the next segment and
            assert synced == [succ] and w._next.durable       # fsyncs its header, nothing else
            w.housekeep(1 << 10)                              # then zero-fills, no fsync
            assert synced == [succ] and w._next is not None and not w._next.sealed
        synced.clear()
        w.append_batch(batch(w, 40, 30))                      # rotates at 50
        assert synced == [] and tmp_files(tmp_path) == [succ]
        assert w.publish_pending()
        files = [n for n in synced if ".rjl" in n]            # (then the directory's)
        assert files == ([pred] if prepared else [pred, succ])
    check_records(reader(tmp_path).read_all())
    assert reader(tmp_path).last_committed_seq() == 70


_CRASH = """
import os, sys
sys.path.insert(0, {root!r})
from tests.engine.test_journal import writer, batch
w = writer({d!r}, fsync="interval_ms")
w.background = True
w.append_batch(batch(w, {n}))
os._exit(0)                      # killed before its thread published the successor
"""


@pytest.mark.parametrize("n", [50, 63, 99])
def test_a_successor_left_unpublished_by_a_crash_is_read_and_adopted(tmp_path, n):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", _CRASH.format(root=root, d=str(tmp_path), n=n)],
                   check=True, timeout=60)
    if n > 50:
        assert tmp_files(tmp_path) == ["w000-00000000000000000051.rjl.tmp"]
    r = reader(tmp_path)
    check_records(r.read_all())
    assert r.last_seq == n and r.torn is None
    with writer(tmp_path) as w:                               # reopening publishes it
        assert w.next_seq == n + 1 and tmp_files(tmp_path) == []
        w.append_batch(batch(w, 10, n))
    r = reader(tmp_path)
    check_records(r.read_all())
    assert r.last_seq == n + 10


def test_a_successor_of_an_incomplete_segment_is_not_part_of_the_journal(tmp_path):
    """A power failure may leave the successor's records on disk and a hole in its
    predecessor: the journal then ends at the hole (a torn tail), the successor is ignored
    by readers and removed by the reopening writer."""
    with writer(tmp_path) as w:
        w.background = True
        w.append_batch(batch(w, 60))
        w._unpublished = None                   # as if the process died before publishing
    seg = list_segments(str(tmp_path), 0)[0][1]
    corrupt(seg, HEADER_SIZE + 45 * RS)         # a hole from record 46 to the end of the
    corrupt(seg, HEADER_SIZE + 46 * RS, bytes(4 * RS))   # predecessor (intact records after a
                                                # bad one would make it corruption, not a tail)
    assert tmp_files(tmp_path) == ["w000-00000000000000000051.rjl.tmp"]
    r = reader(tmp_path)
    check_records(r.read_all())
    assert r.last_seq == 45 and r.torn is not None and r.torn.seq == 46
    with pytest.raises(JournalGapError):                     # the successor is not the journal's:
        r.read_all(from_seq=55)                              # 55 is past its end
    with writer(tmp_path) as w:
        assert w.next_seq == 46 and tmp_files(tmp_path) == []


def _skip_unless_dirtied_pages_are_counted(tmp_path):
    from bench.journal import dirtied_bytes
    before = dirtied_bytes()
    with open(os.path.join(tmp_path, "probe"), "wb") as f:
        f.write(bytes(4096))
    if dirtied_bytes() - before < 4096:
        pytest.skip("this file system does not account dirtied pages (tmpfs?)")


def test_each_journal_page_reaches_the_disk_once(tmp_path):
    """The next segment's zero pages stay dirty in the page cache, and the interval sync
    covers the records' range only: the records overwrite the zero pages before anything
    writes them, and the disk takes each page once. Before, the zero-fill started writeback
    and the whole segment was fsynced, so every page was written as zeros and again with
    records (281 bytes per 136-byte record in a batched run). Driven as the housekeeping
    thread drives it, on this thread, where write_bytes counts what turns dirty."""
    from bench.journal import dirtied_bytes
    _skip_unless_dirtied_pages_are_counted(tmp_path)
    per = 4096 // math.gcd(RS, 4096)      # records per append filling whole pages: a sync of a
    seg = (1 << 20) // (per * RS) * per   # part-filled page writes it again with the next records
    with writer(tmp_path, seg_records=seg, fsync="interval_ms") as w:
        w.background = True
        before, n = dirtied_bytes(), 0
        while n < 6 * seg:                                    # six segments, five rotations
            w.append_batch(batch(w, per, n))
            n += per
            w.publish_pending()                               # one JournalHousekeeper round
            assert w.sync_appended()
            w.housekeep(1 << 20)
        written = dirtied_bytes() - before
    # the records, plus the seventh segment being prepared and the headers: 1.005x here
    # (3.0x before: zero-filled, written back, dirtied again by the prefault and the records)
    assert written < 1.4 * n * RS, (written, n * RS)
    check_records(reader(tmp_path).read_all())


def test_a_record_stored_after_an_fsync_redirties_one_page_not_a_large_folio(tmp_path):
    """Every fsync writes back each dirty folio whole. The segment's zero-fill used to create
    its page cache with 1 MiB writes, so the cache held large folios: a record stored after
    the interval fsync re-dirtied up to 1 MiB, and the next fsync wrote it all out again
    (90 MB/s of disk writes for 2.7 MB/s of records at 20,000 events/s, measured here). The
    zero-fill writes page by page, so a record dirties the page or two it lands on."""
    from bench.journal import dirtied_bytes
    _skip_unless_dirtied_pages_are_counted(tmp_path)
    with writer(tmp_path, seg_records=(4 << 20) // RS) as w:
        (seg,) = [f for f in os.listdir(tmp_path) if f.endswith(".rjl")]
        fd = os.open(os.path.join(tmp_path, seg), os.O_RDONLY)
        try:
            pos = 0
            for _ in range(20):
                w.append_batch(batch(w, 1, pos))
                pos += 1
                os.fsync(fd)                                  # every page clean again
                before = dirtied_bytes()
                w.append_batch(batch(w, 1, pos))
                pos += 1
                assert dirtied_bytes() - before <= 2 * 4096  # the page(s) the record is on
                os.fsync(fd)
        finally:
            os.close(fd)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3 * 4096), st.integers(0, 3 * 4096))
def test_the_zero_fill_zeroes_exactly_its_range(tmp_path_factory, a, b):
    from engine.journal_segments import zero_fill
    lo, hi = min(a, b), max(a, b)
    path = tmp_path_factory.mktemp("zf") / "f"
    path.write_bytes(b"\xff" * (3 * 4096))
    fd = os.open(path, os.O_RDWR)
    try:
        zero_fill(fd, lo, hi)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data == b"\xff" * lo + bytes(hi - lo) + b"\xff" * (3 * 4096 - hi)


@contextlib.contextmanager
def mounted_tmpfs(mnt, size: str):
    """A real tmpfs of ``size`` at the new directory ``mnt`` (a full disk on demand),
    unmounted afterwards; skips the test when not root (CI runs as root)."""
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the full-disk tests run as root in CI)")
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as mnt:
        yield mnt


def fill_disk(d) -> str:
    """Write a file until the file system is full; returns its path (delete it to free)."""
    path = os.path.join(str(d), "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\x01" * 4096)
    except OSError as e:
        assert e.errno == 28
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("background", [False, True])
def test_a_full_disk_makes_the_journal_unavailable_not_a_crash_and_it_resumes(small_tmpfs, background):
    """Issue 19, "Full disk": the rotation's posix_fallocate raised ENOSPC out of the append
    and the worker crash-looped. Now try_reserve says no (counted), nothing is appended, and
    once space returns the journal continues gap-free."""
    jdir = small_tmpfs / "j"
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + 50 * RS, fsync="interval_ms")
    w = JournalWriter(str(jdir), SCHEMA.dtype, SCHEMA.hash, 0, cfg)
    w.background = background
    try:
        w.append_batch(batch(w, 40))
        filler = fill_disk(small_tmpfs)
        w._drop_next()                                     # no successor was prepared in time
        assert w.try_reserve(10)                           # still fits in the current segment
        w.append_batch(batch(w, 10, 40))
        assert not w.try_reserve(5)                        # needs the next segment: no room
        assert w.unavailable == 28 and w.write_errors == 1 and "No space" in w.last_error
        assert not w.try_reserve(5) and w.write_errors == 1   # retried every RETRY_NS only
        k = w.try_append_slots(np.zeros(5 * 8, np.uint64), 8, np.zeros((5, 4), np.uint64), 5)
        assert k == 0 and w.last_seq == 50                 # a forced append journals nothing
        os.unlink(filler)                                  # space returns
        w._retry_at_ns = 0                                 # (instead of waiting RETRY_NS)
        assert w.try_reserve(5) and w.unavailable == 0
        w.append_batch(batch(w, 30, 50))
    finally:
        w.close()
    r = reader(jdir)
    check_records(r.read_all())
    assert r.last_seq == 80


def test_a_full_disk_at_the_first_segment_starts_unavailable(small_tmpfs):
    filler = fill_disk(small_tmpfs)
    cfg = JournalConfig(segment_bytes=HEADER_SIZE + 50 * RS, fsync="none")
    with JournalWriter(str(small_tmpfs / "j"), SCHEMA.dtype, SCHEMA.hash, 0, cfg) as w:
        assert w.unavailable == 28 and not w.try_reserve(1) and w.last_seq == 0
        with pytest.raises(OSError, match="No space"):      # a library append says so
            w.append_batch(batch(w, 3))
        os.unlink(filler)
        w._retry_at_ns = 0
        assert w.try_reserve(1)
        w.append_batch(batch(w, 3))
    check_records(reader(small_tmpfs / "j").read_all())
    filler = fill_disk(small_tmpfs)
    with JournalWriter(str(small_tmpfs / "k"), SCHEMA.dtype, SCHEMA.hash, 0, cfg) as w:
        assert w.unavailable == 28
        os.unlink(filler)
        w.append_batch(batch(w, 3))                        # without try_reserve: made at once
    check_records(reader(small_tmpfs / "k").read_all())


def test_a_record_a_live_writer_was_sealing_is_not_called_corruption(tmp_path):
    """A reader beside a live writer may read record i half-written and then, in a later
    read, records after it sealed. The re-read of record i (sealed by then: the writer seals
    in order) keeps that a torn tail, never corruption."""
    from engine.journal import TornTail
    fill(tmp_path, [30])
    r = reader(tmp_path)
    h = r.segments()[0]
    with open(h.path, "rb") as f:                          # record 5 intact on disk now, as
        bad = TornTail(h.path, HEADER_SIZE + 4 * RS, 5, "checksum mismatch")   # if sealed
        assert r._corrupt_run(h, f.fileno(), 4, 5, bad, older=False) is None   # after the 1st read
    corrupt(h.path, HEADER_SIZE + 4 * RS + 20)             # really corrupt: it stays so
    with open(h.path, "rb") as f:
        run = r._corrupt_run(h, f.fileno(), 4, 5, bad, older=False)
    assert (run.seq, run.count, run.offset) == (5, 1, HEADER_SIZE + 4 * RS)
