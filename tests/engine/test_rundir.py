"""shm.runtime.rundir: where the run directory is, and the config hand-off to the children as
JSON data that they validate again (no pickle, nothing that carries code)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from shm.runtime import rundir
from engine.cmd_serve import add_arguments, serve_config
from shm.runtime.config import ConfigError, load_config, parse_config
from bench.engine_proc import EngineProcess


def test_run_root_defaults(monkeypatch):
    monkeypatch.delenv("RISK_ENGINE_RUN_ROOT", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert rundir.run_root() == Path("/run/risk-engine")
    assert rundir.search_roots() == [Path("/run/risk-engine")]
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert rundir.run_root() == Path("/run/user/1000/risk-engine")
    # an operator's login session still finds an engine that systemd started
    assert rundir.search_roots() == [Path("/run/user/1000/risk-engine"), Path("/run/risk-engine")]
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", "/srv/x")
    assert rundir.run_root() == Path("/srv/x") and rundir.search_roots() == [Path("/srv/x")]


def test_config_hand_off_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    eng = EngineProcess(tmp_path)                  # writes a test config; starts nothing
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--workers", "3", "--metrics", "off", "--rules", "rules/examples/payments.yaml",
                         "--bind", "tcp://127.0.0.1:1234", "--instance", "abc",
                         "--config", str(eng.config_path)])
    for cfg in (load_config(), load_config(eng.config_path),
                serve_config(args)):
        d = rundir.make_run_dir(cfg.instance)
        rundir.write_config(d, cfg)
        assert rundir.read_config(d) == cfg
        assert json.loads((d / "config.json").read_text())["raw"]["instance"] == cfg.instance
    assert not list((tmp_path / "run").rglob("*.pickle"))


def test_a_value_json_cannot_carry_is_refused_not_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    cfg = load_config()
    cfg = replace(cfg, state={"account_state": {"key": "account_id", 7: "x"}})   # int key
    with pytest.raises(ConfigError, match="state: differs after the hand-off"):
        rundir.write_config(rundir.make_run_dir("x"), cfg)


def test_children_validate_the_config_again(tmp_path, monkeypatch):
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    d = rundir.make_run_dir("x")
    rundir.write_config(d, load_config())
    doc = json.loads((d / "config.json").read_text())
    doc["raw"]["rings"]["capacity"] = 3
    (d / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="rings.capacity: must be a power of two"):
        rundir.read_config(d)
    os.chmod(d / "config.json", 0o666)
    with pytest.raises(PermissionError, match="refusing to read it"):
        rundir.read_config(d)
    assert parse_config(doc["raw"] | {"rings": {"capacity": 4}}, doc["path"]).rings.capacity == 4


def supervisor_for(tmp_path, instance: str, jdir: Path, sdir: Path):
    from shm.runtime.config import portable_raw
    from engine.supervisor import Supervisor
    from shm.runtime.topology import read_topology
    raw = portable_raw()
    raw.update(instance=instance, journal={"dir": str(jdir)}, snapshot={"dir": str(sdir)})
    logged: list[str] = []
    return Supervisor(parse_config(raw), topology=read_topology(), log=logged.append), logged


def test_state_dirs_are_made_private_checked_and_narrowed(tmp_path, monkeypatch):
    from engine.supervisor import StartupError
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    jdir, sdir = tmp_path / "st" / "journal", tmp_path / "st" / "snapshots"
    sup, logged = supervisor_for(tmp_path, "x", jdir, sdir)
    sup._check_dirs()
    assert [oct(os.stat(p).st_mode & 0o777) for p in (jdir.parent, jdir, sdir, tmp_path / "run" / "x")] == ["0o700"] * 4
    (jdir / "w000-00000000000000000001.rjl").write_bytes(b"old")   # written 0644 by an older version
    os.chmod(jdir / "w000-00000000000000000001.rjl", 0o644)
    sup._check_dirs()
    assert os.stat(jdir / "w000-00000000000000000001.rjl").st_mode & 0o777 == 0o600
    assert any("1 file(s) readable by others narrowed to mode 0600" in m for m in logged), logged
    os.chmod(sdir, 0o777)
    with pytest.raises(StartupError, match=rf"unsafe directory: snapshot.dir: {sdir}: .*mode 0777 is writable"):
        sup._check_dirs()


def test_an_upgrade_that_would_start_from_empty_state_is_refused(tmp_path, monkeypatch):
    """Journal and snapshots defaulted to /var/tmp/risk-engine/<instance>: a new, empty journal
    dir beside a journal of ours at the old place is an upgrade, not a first start."""
    import shutil
    import uuid
    from engine.supervisor import StartupError
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    inst = "u" + uuid.uuid4().hex[:10]
    old = Path("/var/tmp/risk-engine") / inst
    sup, _ = supervisor_for(tmp_path, inst, tmp_path / "journal", tmp_path / "snapshots")
    sup._check_dirs()                                   # nothing at the old place: a first start
    made_parent = not old.parent.exists()
    try:
        (old / "journal").mkdir(parents=True)
        (old / "journal" / "w000-00000000000000000001.rjl").write_bytes(b"x")
        with pytest.raises(StartupError, match=rf"journal.dir={tmp_path}/journal is empty but {old}/journal"):
            sup._check_dirs()
        (tmp_path / "journal" / "w000-00000000000000000001.rjl").write_bytes(b"x")
        sup._check_dirs()                               # the new place has a journal: no upgrade
    finally:
        shutil.rmtree(old)
        if made_parent:
            old.parent.rmdir()


def test_the_run_dir_of_a_killed_engine_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    """What a SIGKILLed engine leaves (its pid file names no live supervisor) goes; a run
    directory whose supervisor runs stays."""
    import os
    from shm.runtime import rundir
    monkeypatch.setenv(rundir.RUN_ROOT_ENV, str(tmp_path / "run"))
    dead = rundir.make_run_dir("dead")
    (dead / "supervisor.pid").write_text("999999999")
    (dead / "config.json").write_text("{}")
    (dead / "cluster-rules" / "ab").mkdir(parents=True)     # a cluster node's fetched rule files
    (dead / "cluster-rules" / "ab" / "r.yaml").write_text("ruleset: r")
    assert rundir.remove_dead_run_dir("dead") and not dead.exists()
    assert not rundir.remove_dead_run_dir("never")
    live = rundir.make_run_dir("live")
    (live / "supervisor.pid").write_text(str(os.getpid()))
    monkeypatch.setattr(rundir, "is_supervisor", lambda pid: pid == os.getpid())
    assert not rundir.remove_dead_run_dir("live") and (live / "supervisor.pid").exists()
