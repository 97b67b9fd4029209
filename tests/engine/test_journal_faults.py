"""Journal faults against a real engine: a flipped bit in the newest segment (issue 19,
defect 6) and a full disk (issue 19, weakness "Full disk"). Per-account counts are read from
the feature tables' shared memory and compared with what the engine acknowledged."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import yaml

from shm.runtime.config import load_config
from engine.journal import HEADER_SIZE, JournalReader, journal_dtype, list_segments
from engine.snapshot import SnapshotStore
from ingress.client import Client
from bench.engine_proc import EngineProcess
from tests.engine.test_crash_recovery import FEATURES, RULES, table_contents
from bench.events import random_events
from tests.engine.test_journal import fill_disk, mounted_tmpfs
from tests.engine.test_metrics import scrape, value

SCHEMA = load_config().schema
N_ACCOUNTS = 200


def _overrides(tmp, snapshot_interval_s: int, **journal) -> dict:
    rules = tmp / "crash_rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    return {"features": FEATURES, "rules": {"files": [str(rules)]},
            "ingress": {"default_deadline_ms": 10_000},
            "snapshot": {"interval_s": snapshot_interval_s}, "journal": journal}


def _same_engine(tmp, first: EngineProcess, ov: dict, extra_args: tuple = ()) -> EngineProcess:
    """A new engine process over ``first``'s instance, journal and snapshot directories."""
    eng = EngineProcess(tmp, workers=1, overrides=ov, extra_args=extra_args)
    eng.instance = eng.raw["instance"] = first.instance
    eng.raw["journal"] = {**eng.raw["journal"], "dir": first.raw["journal"]["dir"]}
    eng.raw["snapshot"] = {**eng.raw["snapshot"], "dir": first.raw["snapshot"]["dir"]}
    eng.config_path.write_text(yaml.safe_dump(eng.raw, sort_keys=False))
    return eng


def _kill(eng: EngineProcess) -> None:
    """kill -9 of the whole engine; its shared memory reclaimed (the disk is what matters)."""
    eng.kill()
    eng.close()


def _send(eng, acked: dict, n_batches: int, seed: int) -> None:
    """Batches of 10 events over N_ACCOUNTS accounts; ``acked`` counts every acknowledged one."""
    rng = np.random.default_rng(seed)
    with Client(eng.endpoint, SCHEMA, timeout_ms=20_000, retries=0) as c:
        for _ in range(n_batches):
            ev = random_events(rng, SCHEMA, 10)
            ev["account_id"] = rng.integers(0, N_ACCOUNTS, 10)
            for a, d in zip(ev["account_id"].tolist(), c.evaluate_batch(ev)):
                assert not d.flags, d
                acked[a] = acked.get(a, 0) + 1


def _flip_bit_from_end(jdir: str, from_end: int) -> tuple[str, int, int, int]:
    """Flip one bit of the event in the record ``from_end`` records before the newest one of
    the newest segment; returns (path, byte offset, seq, its account)."""
    first, path = list_segments(jdir, 0)[-1]
    recs = JournalReader(jdir, SCHEMA.dtype, SCHEMA.hash, 0).read_all(from_seq=first)
    i = len(recs) - 1 - from_end
    seq = int(recs["seq"][i])
    off = HEADER_SIZE + (seq - first) * journal_dtype(SCHEMA.dtype).itemsize
    with open(path, "r+b") as f:
        f.seek(off + 40)                               # inside the event, past account_id
        b = f.read(1)[0]
        f.seek(off + 40)
        f.write(bytes([b ^ 0x10]))
    return path, off, seq, int(recs["event"]["account_id"][i])


def _counts(eng) -> dict:
    return {k: v for k, v in table_contents(eng, "cnt_acct", 60, "count").items() if v}


@pytest.mark.slow   # three engine starts; in make test: tests/engine/test_recovery.py's in-process sibling
def test_a_flipped_bit_mid_segment_stops_start_then_the_flag_skips_exactly_that_record(tmp_path):
    """Before: the engine started, said "recovered ... N records", and every record after the
    flipped one was dropped and zero-filled (133 accounts below their acknowledged counts)."""
    ov = _overrides(tmp_path, 86_400)
    eng = EngineProcess(tmp_path, workers=1, overrides=ov).start()
    acked: dict = {}
    try:
        _send(eng, acked, 100, seed=1)                 # 1,000 acknowledged events
    finally:
        _kill(eng)                                     # kill -9 of the whole engine
    jdir = eng.raw["journal"]["dir"]
    path, off, seq, account = _flip_bit_from_end(jdir, 300)

    refused = _same_engine(tmp_path, eng, ov)
    try:
        refused.start()
        raise AssertionError(f"the engine started over a corrupt journal:\n{refused.output()}")
    except RuntimeError as e:
        assert "engine exited with 2" in str(e)
        assert f"{path}: offset={off} seq={seq}:" in refused.output()
        assert "--skip-corrupt-journal-records" in refused.output()
    finally:
        _kill(refused)
    assert len(JournalReader(jdir, SCHEMA.dtype, SCHEMA.hash, 0,
                             skip_corrupt=True).read_all()) == 999      # nothing was discarded

    with _same_engine(tmp_path, eng, ov, ("--skip-corrupt-journal-records",)) as eng3:
        out = eng3.output()
        assert f"SKIPPED (journal.skip_corrupt_records), their events are not counted: " \
               f"journal segment {path}: offset={off} seq={seq}:" in out
        want = dict(acked)
        want[account] -= 1                             # exactly the skipped record
        assert _counts(eng3) == {k: v for k, v in want.items() if v}
        assert value(scrape(eng3.metrics_url), "risk_journal_corrupt_records_total") == 1


@pytest.mark.slow   # two engine starts and a snapshot; in make test: test_recovery.py's in-process sibling
def test_a_flipped_bit_under_the_snapshot_never_reuses_seqs_and_loses_nothing(tmp_path):
    """Before: the restarted writer reused the sequence numbers from the flipped record on,
    all at or below the snapshot's, and after the next kill -9 the replay from that snapshot
    skipped them: 301 acknowledged events lost (150 accounts wrong), silently."""
    ov = _overrides(tmp_path, 1)
    eng = EngineProcess(tmp_path, workers=1, overrides=ov).start()
    acked: dict = {}
    jdir = eng.raw["journal"]["dir"]
    try:
        _send(eng, acked, 100, seed=2)
        last = JournalReader(jdir, SCHEMA.dtype, SCHEMA.hash, 0).last_committed_seq()
        assert last == 1000
        store = SnapshotStore(eng.raw["snapshot"]["dir"])
        t_end = time.monotonic() + 60                  # the 1 s snapshot timer covers it all
        while time.monotonic() < t_end:
            snap, _ = store.load_latest()
            if snap is not None and snap.journal_seq.get(0) == last:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no snapshot of the whole journal within 60 s")
    finally:
        _kill(eng)
    path, off, seq, _ = _flip_bit_from_end(jdir, 300)  # held by the snapshot: nothing lost

    ov = _overrides(tmp_path, 86_400)                  # no newer snapshot from here on
    eng2 = _same_engine(tmp_path, eng, ov).start()
    try:
        assert _counts(eng2) == acked
        _send(eng2, acked, 50, seed=3)                 # 500 more, acknowledged
        out2 = eng2.output()
    finally:
        _kill(eng2)
    sdir = eng.raw["snapshot"]["dir"]                 # a newer snapshot that fails validation:
    bogus = f"{sdir}/snap-{time.time_ns() + 10**12:020d}.rsnap"   # refused, said and counted
    with open(sorted(SnapshotStore(sdir).paths())[-1], "rb") as f, open(bogus, "wb") as g:
        raw = f.read()
        g.write(raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    with _same_engine(tmp_path, eng, ov) as eng3:
        got = _counts(eng3)
        wrong = [a for a in acked if got.get(a, 0) != acked[a]]
        assert wrong == [], f"{len(wrong)} accounts differ from what was acknowledged"
        assert f"snapshot refused, recovery used an older one or none: snapshot {bogus}: " in eng3.output()
        assert value(scrape(eng3.metrics_url), "risk_snapshot_refused_total") == 1
    assert f"held by the snapshot, nothing lost: journal segment {path}: offset={off} seq={seq}:" in out2
    recs = JournalReader(jdir, SCHEMA.dtype, SCHEMA.hash, 0, skip_corrupt=True).read_all()
    assert int(recs["seq"][-1]) == 1500 and len(recs) == 1499


def _metric(eng, name: str, **labels) -> float:
    return value(scrape(eng.metrics_url), name, **labels)


def test_a_full_disk_answers_journal_unavailable_without_restarts_then_resumes(tmp_path):
    """Before: on a 2 MiB tmpfs the rotation's posix_fallocate raised ENOSPC out of the
    worker's append; the worker crash-looped (each restart a full feature rebuild) and clients
    got OVERLOADED "worker N is behind". Now the events that cannot be journaled are answered
    with journal.on_unavailable's action flagged DEFAULT_JOURNAL (JOURNAL_UNAVAILABLE) and not
    counted, no worker restarts, and decisions are normal again once space returns.
    Allowed outcomes per request: a normal decision, or every decision of it flagged
    JOURNAL_UNAVAILABLE (a request is one batch of one worker here)."""
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        ov = _overrides(tmp_path, 86_400, dir=str(disk / "journal"), segment_bytes=1 << 16)
        with EngineProcess(tmp_path, workers=1, overrides=ov) as eng:
            rng = np.random.default_rng(5)
            normal = refused = 0
            with Client(eng.endpoint, SCHEMA, timeout_ms=20_000, retries=0) as c:
                def send() -> bool:
                    """One request of 20 events; True if the journal refused it."""
                    nonlocal normal, refused
                    ds = c.evaluate_batch(random_events(rng, SCHEMA, 20))
                    bad = [d for d in ds if d.error == "JOURNAL_UNAVAILABLE"]
                    assert len(bad) in (0, len(ds)), ds
                    for d in bad:
                        assert d.action == "block" and d.flags == ("DEFAULT_JOURNAL",), d
                    if not bad:
                        assert all(not set(d.flags) - {"EVAL_ERROR"} for d in ds), ds
                    normal += 0 if bad else len(ds)
                    refused += len(bad)
                    return bool(bad)

                send()
                filler = fill_disk(disk)
                for _ in range(200):                   # a 64 KiB segment holds ~450 events
                    if send():
                        break
                else:
                    raise AssertionError("no JOURNAL_UNAVAILABLE after 4,000 events on a full disk")
                for _ in range(20):                    # it stays so, answered at once
                    assert send()
                assert _metric(eng, "risk_journal_unavailable", worker="0") == 1
                assert _metric(eng, "risk_journal_write_errors_total", worker="0") >= 1
                assert _metric(eng, "risk_worker_restarts_total") == 0
                os.unlink(filler)                      # space returns
                # the idle worker retries its journal (a cluster node that handed its
                # partitions over gets no events): available again with no event sent
                t_end = time.monotonic() + 60
                while _metric(eng, "risk_journal_unavailable", worker="0") != 0:
                    assert time.monotonic() < t_end, "still unavailable 60 s after space returned (idle)"
                    time.sleep(0.05)
                for _ in range(20):
                    assert not send()
            assert _metric(eng, "risk_journal_unavailable", worker="0") == 0
            assert _metric(eng, "risk_worker_restarts_total") == 0
            out = eng.output()
            assert "journal unavailable ([Errno 28] No space left on device)" in out
            assert "journal available again" in out and "restarting" not in out
            time.sleep(0.5)                            # the last appends are in the page cache
            recs = JournalReader(str(disk / "journal"), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
            assert len(recs) == normal and refused >= 20 * 21   # refused events: not journaled
