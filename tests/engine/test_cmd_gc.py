"""`risk-engine gc` (engine/cmd_gc.py) on real journal segments and snapshots: it removes what
retention lets go, refuses while a writer holds the journal, and recovery afterwards equals
recovery before (and a brute-force count of every record)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import yaml

from engine.cmd_gc import GcRefused, gc
from engine.journal import JournalConfig, JournalWriter, list_segments
from engine.recovery import recover
from engine.snapshot import SnapshotStore
from shm.runtime.config import load_config, portable_raw
from bench.engine_proc import REPO

NKEYS = 500


def make_config(tmp_path, **journal):
    raw = portable_raw()
    raw["instance"] = "gc" + uuid.uuid4().hex[:8]
    raw["journal"] = {**raw["journal"], "dir": str(tmp_path / "journal"), "segment_bytes": 1 << 16,
                      **journal}
    raw["snapshot"] = {**raw["snapshot"], "dir": str(tmp_path / "snapshots"), "keep": 2}
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(str(path)), path


def fill(cfg, rounds: int = 5, per_round: int = 2000):
    """Journal records and a snapshot of per-account counts after each round (the library
    protocol: sync, then the snapshot naming last_seq). Returns the brute-force counts."""
    d = cfg.durability
    w = JournalWriter(d.journal_dir, cfg.schema.dtype, cfg.schema.hash, 0,
                      JournalConfig(segment_bytes=d.segment_bytes, fsync="none"))
    store = SnapshotStore(d.snapshot_dir, keep=100)     # gc, not the writer, applies keep
    counts = np.zeros(NKEYS, np.int64)
    rng = np.random.default_rng(7)
    for _ in range(rounds):
        for _ in range(per_round // 100):
            b = w.empty_batch(100)
            b["event"]["account_id"] = rng.integers(0, NKEYS, 100)
            w.append_batch(b)
            np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
        w.sync()
        store.write({"counts": counts}, {0: w.last_seq})
    b = w.empty_batch(50)                               # records after the newest snapshot
    b["event"]["account_id"] = rng.integers(0, NKEYS, 50)
    w.append_batch(b)
    np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
    w.close()
    return counts


def recovered(cfg):
    d = cfg.durability
    counts = np.zeros(NKEYS, np.int64)

    def restore(snap):
        counts[:] = snap.arrays["counts"] if snap is not None else 0

    def apply(b):
        np.add.at(counts, b["event"]["account_id"].astype(np.int64), 1)
    rep = recover(d.snapshot_dir, d.journal_dir, apply, event_dtype=cfg.schema.dtype,
                  schema_hash=cfg.schema.hash, restore=restore)
    return counts, rep


def test_gc_removes_what_retention_allows_and_recovery_is_unchanged(tmp_path):
    cfg, path = make_config(tmp_path, max_files=8)
    d = cfg.durability
    truth = fill(cfg)
    segs0 = list_segments(d.journal_dir, 0)
    snaps0 = SnapshotStore(d.snapshot_dir).paths()
    assert len(segs0) > 6 and len(snaps0) == 5
    before, rep0 = recovered(cfg)
    assert np.array_equal(before, truth)

    removed = gc(cfg, dry_run=True, log=lambda line: None)
    assert removed and SnapshotStore(d.snapshot_dir).paths() == snaps0      # dry run: nothing gone
    removed = gc(cfg, log=lambda line: None)
    snaps = SnapshotStore(d.snapshot_dir).paths()
    assert snaps == snaps0[:2]                            # snapshot.keep = 2, newest kept
    segs = list_segments(d.journal_dir, 0)
    floor = SnapshotStore(d.snapshot_dir).oldest_journal_seq(0)
    needed = [s for s, nxt in zip(segs0, segs0[1:] + [(1 << 62, "")]) if nxt[0] > floor]
    assert len(needed) < 8 and segs == segs0[-8:]         # journal.max_files = 8
    after, rep = recovered(cfg)
    assert np.array_equal(after, truth)
    assert (rep.snapshot_path, rep.snapshot_seq, rep.last_seq) == (rep0.snapshot_path, rep0.snapshot_seq, rep0.last_seq)

    # --all-covered: down to the segment holding the oldest kept snapshot's seq, not past it
    gc(cfg, all_covered=True, log=lambda line: None)
    oldest_s = SnapshotStore(d.snapshot_dir).oldest_journal_seq(0)
    segs = list_segments(d.journal_dir, 0)
    assert segs == needed and segs[0][0] <= oldest_s == floor
    after, _ = recovered(cfg)
    assert np.array_equal(after, truth)
    os.unlink(snaps[0])                                   # the older snapshot is usable too:
    after, _ = recovered(cfg)                             # recovery falls back to it
    assert np.array_equal(after, truth)


def test_gc_keeps_a_valid_snapshot_behind_a_corrupt_newer_one(tmp_path):
    cfg, _ = make_config(tmp_path, max_files=1)
    truth = fill(cfg, rounds=3)
    store = SnapshotStore(cfg.durability.snapshot_dir)
    newest = store.paths()[0]
    with open(newest, "r+b") as f:                        # one flipped byte in the arrays
        f.seek(os.path.getsize(newest) - 8)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    lines = []
    gc(cfg, log=lines.append)
    assert newest in store.paths() and len(store.paths()) == 3   # corrupt kept + 2 valid
    assert any("fails validation" in ln for ln in lines)
    after, rep = recovered(cfg)
    assert np.array_equal(after, truth) and rep.refused


def test_gc_refuses_while_a_writer_holds_the_journal(tmp_path):
    cfg, path = make_config(tmp_path, max_files=1)
    fill(cfg)
    d = cfg.durability
    segs = list_segments(d.journal_dir, 0)
    w = JournalWriter(d.journal_dir, cfg.schema.dtype, cfg.schema.hash, 0,
                      JournalConfig(segment_bytes=d.segment_bytes, fsync="none"))
    try:
        with pytest.raises(GcRefused, match="held by a running writer"):
            gc(cfg, log=lambda line: None)
        p = subprocess.run([sys.executable, "-m", "engine.cli", "gc", "--config", str(path)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "refused" in p.stderr, p
        assert list_segments(d.journal_dir, 0) == segs
    finally:
        w.close()
    p = subprocess.run([sys.executable, "-m", "engine.cli", "gc", "--config", str(path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "freed" in p.stdout, p
    assert len(list_segments(d.journal_dir, 0)) < len(segs)
