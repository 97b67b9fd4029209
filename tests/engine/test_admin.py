"""Admin plane against a real engine: lists, account state, halt, every change logged."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.admin import request
from engine.admin_log import read as read_admin_log
from bench.engine_proc import REPO, EngineProcess


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin")
    ov = {"lists": {"blocked_ips": {"type": "u32", "file": str(REPO / "rules/examples/blocked_ips.txt"),
                                    "capacity": 64}},
          "state": {"account_state": {"key": "account_id", "capacity": 1024}}}
    with EngineProcess(tmp, workers=1, metrics=False, overrides=ov) as eng:
        eng.admin = eng.admin_bind
        yield eng


def admin(eng, **req):
    return request(eng.admin, req, 30_000)


def test_list_show_add_remove_replace(engine):
    r = admin(engine, cmd="list-show", name="blocked_ips")
    assert r["ok"] and r["count"] >= 1
    n0 = r["count"]
    assert admin(engine, cmd="list-add", name="blocked_ips", values=["10.9.9.9", "10.9.9.8"])["count"] == n0 + 2
    assert 0x0A090909 in admin(engine, cmd="list-show", name="blocked_ips")["values"]
    assert admin(engine, cmd="list-remove", name="blocked_ips", values=["10.9.9.9"])["count"] == n0 + 1
    assert admin(engine, cmd="list-replace", name="blocked_ips", values=["1.2.3.4"])["count"] == 1
    bad = admin(engine, cmd="list-add", name="blocked_ips", values=["300.1.1.1"])
    assert not bad["ok"] and bad["error"]["code"] == "BAD_LIST"
    assert admin(engine, cmd="list-show", name="blocked_ips")["count"] == 1      # unchanged
    assert admin(engine, cmd="list-show", name="nope")["error"]["code"] == "UNKNOWN_LIST"


def test_state_and_halt_are_logged(engine):
    assert admin(engine, cmd="set-state", name="account_state", key=42, state="HALTED")["ok"]
    assert admin(engine, cmd="set-state", name="account_state", key=42, state="SLEEPY")["error"]["code"] == "BAD_ARGUMENT"
    assert admin(engine, cmd="halt")["global_halt"] is True
    assert admin(engine, cmd="resume")["global_halt"] is False
    log = Path(engine.raw["journal"]["dir"]) / "admin.log"
    cmds = [r["cmd"] for r in read_admin_log(str(log))[0]]
    assert cmds[-3:] == ["set-state", "halt", "resume"]
    assert admin(engine, cmd="bogus")["error"]["code"] == "UNKNOWN_COMMAND"
    assert "memory" in admin(engine, cmd="features")


def test_snapshot_pauses_workers_and_records_journal_seqs(engine):
    import numpy as np
    from shm.runtime.config import load_config
    from engine.journal import JournalReader
    from engine.snapshot import SnapshotStore
    from ingress.client import Client
    from bench.events import random_events
    schema = load_config().schema
    with Client(engine.endpoint, schema, timeout_ms=20_000, retries=0) as c:
        c.evaluate_batch(random_events(np.random.default_rng(5), schema, 25))
    assert admin(engine, cmd="set-state", name="account_state", key=7, state="REDUCING")["ok"]
    r = admin(engine, cmd="snapshot")
    assert r["ok"], r
    snap, refused = SnapshotStore(engine.raw["snapshot"]["dir"]).load_latest()
    assert snap is not None and not refused and snap.path == r["path"]
    last = JournalReader(engine.raw["journal"]["dir"], schema.dtype, schema.hash, 0).last_committed_seq()
    assert snap.journal_seq == {0: last} and last >= 25
    assert set(snap.arrays) >= {"fl_blocked_ips", "st_account_state"}
    st = admin(engine, cmd="stats")["stats"]
    pause = st["risk_snapshot_pause_seconds"][0]["value"]
    assert 0 < pause <= st["risk_snapshot_pause_max_seconds"][0]["value"] < 5.0
    assert st["risk_snapshots"][0]["value"] >= 1
