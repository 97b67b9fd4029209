"""Recovery = last good snapshot + journal replay: exact after SIGKILL of a real writer process.

Allowed outcomes of a kill: the journal ends at any committed record (a torn last record is
ignored), the newest snapshot may be absent or half-written (a .tmp file), the state rebuilt
by recovery must equal a brute-force recount of every record the journal holds as committed.
"""
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.journal import JournalConfig, JournalReader, JournalWriter
from engine.recovery import RecoveryError, recover, recover_all
from shm.schema import Schema
from engine.snapshot import SnapshotStore

FIELDS = {"account_id": "u64", "amount": "f64"}
SCHEMA = Schema.build(FIELDS, "account_id")
NKEYS = 1000
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import sys, time
import numpy as np
from engine.journal import JournalConfig, JournalWriter
from engine.recovery import recover
from shm.schema import Schema
from engine.snapshot import SnapshotStore
jdir, sdir, seed, nkeys = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
schema = Schema.build(%r, "account_id")
counts = np.zeros(nkeys, np.int64)
def restore(snap):
    counts[:] = snap.arrays["counts"] if snap is not None else 0
def apply(b):
    np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
rep = recover(sdir, jdir, apply, event_dtype=schema.dtype, schema_hash=schema.hash, restore=restore)
w = JournalWriter(jdir, schema.dtype, schema.hash, 0, JournalConfig(segment_bytes=1 << 18, fsync="none"))
assert w.last_seq == rep.last_seq, (w.last_seq, rep)
store = SnapshotStore(sdir, keep=2)
ballast = np.arange(1 << 20, dtype=np.int64)   # 8 MiB: a snapshot write takes long enough to be hit
rng = np.random.default_rng(seed)
deadline = time.monotonic() + 30               # bounded: the parent kills us long before
announced = False
while time.monotonic() < deadline:
    if w.records_appended and not announced:   # the kill window opens once appends flow
        print("ready", flush=True)
        announced = True
    n = int(rng.integers(1, 300))
    b = w.empty_batch(n)
    b["event"]["account_id"] = rng.integers(0, nkeys, n)
    b["event"]["amount"] = rng.random(n)
    w.append_batch(b)
    np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
    if rng.random() < 0.05:                    # between two batches: state == records 1..last_seq
        w.sync()
        store.write({"counts": counts, "ballast": ballast}, {0: w.last_seq})
""" % (FIELDS,)


def rebuild(sdir, jdir):
    counts = np.zeros(NKEYS, np.int64)

    def restore(snap):
        counts[:] = snap.arrays["counts"] if snap is not None else 0

    def apply(b):
        np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
    rep = recover(str(sdir), str(jdir), apply, event_dtype=SCHEMA.dtype, schema_hash=SCHEMA.hash,
                  restore=restore)
    return counts, rep


def recount(jdir):
    r = JournalReader(str(jdir), SCHEMA.dtype, SCHEMA.hash)
    recs = r.read_all()
    assert len(recs) == r.last_seq and (recs["seq"] == np.arange(1, len(recs) + 1)).all()
    return np.bincount(recs["event"]["account_id"].astype(np.int64), minlength=NKEYS), r.last_seq


def test_sigkill_mid_load_then_recovery_equals_brute_force_recount(tmp_path):
    jdir, sdir = tmp_path / "journal", tmp_path / "snap"
    rng = np.random.default_rng(7)
    used_snapshot = replayed = 0
    for rnd in range(12):       # at least 4 kills; more (bounded) until both paths were hit twice
        if rnd >= 4 and used_snapshot >= 2 and replayed >= 2:
            break
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(jdir), str(sdir), str(rnd), str(NKEYS)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            ready, _, _ = select.select([p.stdout], [], [], 60)
            line = p.stdout.readline() if ready else b""
            if line != b"ready\n":
                p.wait(10)
                pytest.fail(f"child not ready: {p.stderr.read().decode()[-2000:]}")
            time.sleep(rng.uniform(0.2, 0.8))                    # let it load (or die)
            assert p.poll() is None, p.stderr.read()
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            p.stdout.close()
            p.stderr.close()
        assert p.returncode == -signal.SIGKILL
        counts, rep = rebuild(sdir, jdir)
        expect, last = recount(jdir)
        assert last > 0 and rep.last_seq == last
        assert rep.snapshot_seq + rep.replayed == last
        assert (counts == expect).all(), f"round {rnd}: {int(np.abs(counts - expect).sum())} counts off"
        used_snapshot += rep.snapshot_path is not None
        replayed += rep.replayed > 0
    assert used_snapshot >= 2 and replayed >= 2


def write_journal(jdir, keys, seg_bytes=1 << 16):
    w = JournalWriter(str(jdir), SCHEMA.dtype, SCHEMA.hash, 0, JournalConfig(segment_bytes=seg_bytes, fsync="none"))
    b = w.empty_batch(len(keys))
    b["event"]["account_id"] = keys
    w.append_batch(b)
    return w


def test_fallback_to_older_snapshot_when_newest_is_corrupt(tmp_path):
    keys = np.random.default_rng(1).integers(0, NKEYS, 5000)
    store = SnapshotStore(str(tmp_path / "s"), keep=3)
    w = write_journal(tmp_path / "j", keys[:2000])
    store.write({"counts": np.bincount(keys[:2000], minlength=NKEYS)}, {0: 2000})
    b = w.empty_batch(3000)
    b["event"]["account_id"] = keys[2000:]
    w.append_batch(b)
    newest = store.write({"counts": np.bincount(keys[:4000], minlength=NKEYS)}, {0: 4000})
    w.close()
    with open(newest, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        f.write(b"XXXXX")
    counts, rep = rebuild(tmp_path / "s", tmp_path / "j")
    assert rep.snapshot_seq == 2000 and rep.replayed == 3000 and len(rep.refused) == 1
    assert newest in rep.refused[0]
    assert (counts == np.bincount(keys, minlength=NKEYS)).all()


def test_snapshot_ahead_of_journal_is_an_error(tmp_path):
    write_journal(tmp_path / "j", np.arange(10)).close()
    SnapshotStore(str(tmp_path / "s")).write({"counts": np.zeros(NKEYS, np.int64)}, {0: 11})
    with pytest.raises(RecoveryError, match="includes seq 11 but the journal ends at seq 10"):
        rebuild(tmp_path / "s", tmp_path / "j")


def test_no_snapshot_and_truncated_journal_is_an_error(tmp_path):
    w = JournalWriter(str(tmp_path / "j"), SCHEMA.dtype, SCHEMA.hash, 0,
                      JournalConfig(segment_bytes=4096 + 16 * 100, fsync="none", max_files=2))
    w.append_batch(w.empty_batch(1000))
    w.close()
    with pytest.raises(RecoveryError, match="no snapshot seq and the journal starts at seq"):
        rebuild(tmp_path / "s", tmp_path / "j")


def test_recover_all_merges_writers_after_their_snapshot_seqs(tmp_path):
    rng = np.random.default_rng(5)
    cfg = JournalConfig(segment_bytes=4096 + 56 * 40, fsync="none")
    ws = {w: JournalWriter(str(tmp_path / "j"), SCHEMA.dtype, SCHEMA.hash, w, cfg) for w in (0, 1, 2)}
    counts = np.zeros(NKEYS, np.int64)
    store = SnapshotStore(str(tmp_path / "s"))
    for step in range(12):
        for w, jw in ws.items():
            n = int(rng.integers(0, 30))
            b = jw.empty_batch(n)
            b["event"]["account_id"] = rng.integers(0, NKEYS, n)
            b["arrival_ns"] = step * 1000 + np.arange(n)
            jw.append_batch(b)
            np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
        if step == 6:                                      # every writer between two batches
            at_snapshot = {w: jw.last_seq for w, jw in ws.items()}
            store.write({"counts": counts}, at_snapshot)
    for jw in ws.values():
        jw.close()
    got = np.zeros(NKEYS, np.int64)
    arrivals = []

    def restore(snap):
        got[:] = snap.arrays["counts"]

    def apply(recs, wid):
        arrivals.append(recs["arrival_ns"])
        np.add.at(got, recs["event"]["account_id"].astype(np.int64), 1)
    reps = recover_all(str(tmp_path / "s"), str(tmp_path / "j"), apply, event_dtype=SCHEMA.dtype,
                       schema_hash=SCHEMA.hash, restore=restore, batch_records=16)
    assert (got == counts).all()
    assert (np.diff(np.concatenate(arrivals)) >= 0).all()         # merged by arrival
    assert {w: r.snapshot_seq for w, r in reps.items()} == at_snapshot
    assert all(r.snapshot_seq + r.replayed == r.last_seq == ws[w].last_seq for w, r in reps.items())


def _flip_bit(path, offset, bit=3):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def _newest_segment_record_offset(jdir, from_end):
    """(path, byte offset) of the record ``from_end`` records before the newest one."""
    from engine.journal import HEADER_SIZE, journal_dtype, list_segments
    path = list_segments(str(jdir), 0)[-1][1]
    r = JournalReader(str(jdir), SCHEMA.dtype, SCHEMA.hash).read_all()
    rs = journal_dtype(SCHEMA.dtype).itemsize
    first = list_segments(str(jdir), 0)[-1][0]
    seq = int(r["seq"][-1]) - from_end
    return path, HEADER_SIZE + (seq - first) * rs, seq


def test_a_flipped_bit_mid_journal_stops_recovery_and_the_flag_skips_exactly_it(tmp_path):
    """Issue 19, defect 6, first half: a bit flipped in the record 300 from the end of the
    newest segment. Recovery stops naming file, offset and seq (before: the 300 later records
    were dropped and the writer zero-filled them); with skip_corrupt exactly that record is
    skipped; the reopening writer keeps the later ones and continues after them."""
    keys = np.random.default_rng(3).integers(0, NKEYS, 2000)
    write_journal(tmp_path / "j", keys, seg_bytes=1 << 20).close()
    path, off, seq = _newest_segment_record_offset(tmp_path / "j", 300)
    _flip_bit(path, off + 20)
    from engine.journal import JournalCorruptError
    with pytest.raises(JournalCorruptError) as e:
        rebuild(tmp_path / "s", tmp_path / "j")
    assert f"{path}: offset={off} seq={seq}:" in str(e.value)
    counts = np.zeros(NKEYS, np.int64)
    rep = recover(str(tmp_path / "s"), str(tmp_path / "j"),
                  lambda b: np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1),
                  event_dtype=SCHEMA.dtype, schema_hash=SCHEMA.hash, restore=lambda s: None,
                  skip_corrupt=True)
    expect = np.bincount(np.delete(keys, seq - 1), minlength=NKEYS)
    assert (counts == expect).all() and rep.last_seq == 2000 and rep.replayed == 1999
    assert [(c.path, c.offset, c.seq, c.count) for c in rep.corrupt] == [(path, off, seq, 1)]
    w = JournalWriter(str(tmp_path / "j"), SCHEMA.dtype, SCHEMA.hash, 0,
                      JournalConfig(segment_bytes=1 << 20, fsync="none"))
    assert w.next_seq == 2001 and w.torn_bytes_repaired == 0
    w.close()


def test_a_flipped_bit_under_the_snapshot_never_makes_the_writer_reuse_seqs(tmp_path):
    """Issue 19, defect 6, second half: the flipped record is covered by the newest snapshot.
    Before, the writer restarted at the flipped seq, reusing numbers at or below the
    snapshot's, and the next recovery (from that snapshot) skipped the 300 newer records.
    Now the writer continues after the journal's end and recovery counts every record."""
    keys = np.random.default_rng(4).integers(0, NKEYS, 3000)
    store = SnapshotStore(str(tmp_path / "s"))
    w = write_journal(tmp_path / "j", keys[:2000], seg_bytes=1 << 20)
    store.write({"counts": np.bincount(keys[:2000], minlength=NKEYS)}, {0: 2000})
    w.close()
    path, off, seq = _newest_segment_record_offset(tmp_path / "j", 300)
    _flip_bit(path, off + 20)
    counts, rep = rebuild(tmp_path / "s", tmp_path / "j")          # nothing lost: reported
    assert rep.snapshot_seq == 2000 and rep.last_seq == 2000
    assert [(c.offset, c.seq) for c in rep.corrupt] == [(off, seq)]
    w = JournalWriter(str(tmp_path / "j"), SCHEMA.dtype, SCHEMA.hash, 0,
                      JournalConfig(segment_bytes=1 << 20, fsync="none"), seq_floor=rep.snapshot_seq)
    assert w.next_seq == 2001
    b = w.empty_batch(1000)
    b["event"]["account_id"] = keys[2000:]
    w.append_batch(b)
    w.close()                                                     # (a kill -9 keeps the same)
    counts, rep = rebuild(tmp_path / "s", tmp_path / "j")
    assert rep.replayed == 1000 and (counts == np.bincount(keys, minlength=NKEYS)).all()
