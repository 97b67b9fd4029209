"""engine.rundir: where the run directory is, and the config hand-off to the children as
JSON data that they validate again (no pickle, nothing that carries code)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from engine import rundir
from engine.cmd_serve import add_arguments, apply_overrides
from engine.config import ConfigError, load_config, parse_config
from tests.engine.engine_proc import EngineProcess


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
                         "--bind", "tcp://127.0.0.1:1234", "--instance", "abc"])
    for cfg in (load_config(), load_config(eng.config_path),
                apply_overrides(load_config(eng.config_path), args)):
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
