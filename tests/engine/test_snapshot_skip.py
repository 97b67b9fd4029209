"""Periodic snapshots are written only when the state changed (issue 25, disk hygiene): an
idle engine wrote a full snapshot (77 MB with the default config) every interval. A real
engine with snapshot.interval_s = 1; changes are one journaled event and one admin change."""
from __future__ import annotations

import time

import pytest

from engine.admin import request
from engine.snapshot import SnapshotStore
from shm.features.lists import list_values
from shm.runtime.config import load_config
from bench.engine_proc import EngineProcess
from tests.engine.test_metrics import scrape, value
from tests.engine.test_reload import decide

WAIT_S = 120          # generous: the machine may be loaded


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with EngineProcess(tmp_path_factory.mktemp("snapskip"), workers=1,
                       overrides={"snapshot": {"interval_s": 1}}) as eng:
        yield eng


def counts(eng) -> tuple[int, int]:
    m = scrape(eng.metrics_url)
    return int(value(m, "risk_snapshots_total")), int(value(m, "risk_snapshots_skipped_total"))


def settle(eng, written: int) -> tuple[int, int]:
    """Wait until 3 periodic snapshots after ``written`` were due: skipped ones (the new
    engine) or written ones (the old engine wrote every interval). (written, skipped)."""
    t_end = time.monotonic() + WAIT_S
    _, skipped0 = counts(eng)
    while time.monotonic() < t_end:
        w, s = counts(eng)
        if w - written + s - skipped0 >= 3:
            return w, s
        time.sleep(0.2)
    raise AssertionError(f"no periodic snapshot was due within {WAIT_S} s")


def wait_written(eng, n: int) -> int:
    t_end = time.monotonic() + WAIT_S
    while time.monotonic() < t_end and counts(eng)[0] < n:
        time.sleep(0.2)
    return counts(eng)[0]


@pytest.mark.slow                  # an engine of its own, then about 15 s of snapshot intervals
def test_idle_engine_writes_no_second_snapshot_until_an_event_or_admin_change(engine):
    store = SnapshotStore(engine.raw["snapshot"]["dir"], keep=1000)
    first = wait_written(engine, 1)
    assert first >= 1, engine.output()
    written, skipped = settle(engine, first)
    assert written == first and skipped >= 3           # idle: nothing written
    files = store.paths()
    assert "snapshot skipped: nothing changed" in engine.output()

    decide(engine, load_config().schema, n=1)           # one journaled event
    assert wait_written(engine, written + 1) == written + 1
    written, _ = settle(engine, written + 1)
    assert written == first + 1                         # and idle again after it
    assert len(store.paths()) >= 1 and store.paths() != files

    r = request(engine.admin_bind, {"cmd": "list-add", "name": "blocked_ips",
                                    "values": ["10.7.7.7"]}, 30_000)
    assert r["ok"], r
    assert wait_written(engine, written + 1) == written + 1
    snap, _ = store.load_latest()                        # the change is in the new snapshot
    assert 0x0A070707 in list_values(snap.arrays["fl_blocked_ips"]).tolist()
    written, _ = settle(engine, written + 1)
    assert written == first + 2
