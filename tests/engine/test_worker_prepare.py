"""A worker serves exactly the rules the supervisor compiled and published for a generation
(engine/worker_prepare.py load_generation), and `explain` replays with them
(engine/explain_job.py), never a rule file edited on disk since."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from bench.engine_proc import EngineProcess
from bench.events import random_events
from engine.admin import request as admin_request
from engine.journal import iter_merged
from engine.reload import ruleset_spec
from engine.worker_prepare import GenerationMismatch, load_generation
from ingress.client import Client
from ingress.jsonevents import EventConverter
from shm.runtime import rundir
from shm.runtime.config import load_config
from tests.engine.test_reload import ruleset, wait_label
from tests.engine.test_standby import READY, roles, wait_for


def decide_amount(eng, schema, amount: float):
    recs = random_events(np.random.default_rng(7), schema, 1)
    recs["amount"] = amount
    with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0, transport="json") as c:
        return c.evaluate_batch(EventConverter(schema).to_events(recs))[0]


@pytest.mark.slow          # 15-22 s warm (a reload, three worker preparations, an explain)
def test_a_restarted_worker_serves_the_published_bytes_not_the_file_edited_since(tmp_path):
    schema = load_config().schema
    v1 = ruleset(tmp_path / "v1.yaml", 1)
    live = tmp_path / "live.yaml"
    eng = EngineProcess(tmp_path, workers=1, overrides={"rules": {"files": [v1]},
                                                         "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        spare0 = wait_for(lambda: roles(eng).get(READY))
        ruleset(live, 2, when="amount > 100", action="block")
        out = subprocess.run([sys.executable, "-m", "engine.cli", "reload", "--instance", eng.instance,
                              "--rules", str(live)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert wait_label(eng, schema, "live@2")
        # The spare prepared for generation 2 may have read the file before the edit: retire it
        # after the edit, so the one that takes worker 0 over prepares after it.
        spare1 = wait_for(lambda: roles(eng).get(READY) not in (None, spare0) and roles(eng).get(READY))
        assert spare1, roles(eng)
        ruleset(live, 2, when="amount < 0", action="block")      # same label, blocks nothing; no reload
        os.kill(spare1, signal.SIGKILL)
        spare2 = wait_for(lambda: roles(eng).get(READY) not in (None, spare1) and roles(eng).get(READY))
        assert spare2, roles(eng)
        os.kill(roles(eng)["worker 0"], signal.SIGKILL)
        assert wait_for(lambda: roles(eng).get("worker 0") == spare2), roles(eng)
        d = decide_amount(eng, schema, 500.0)
        assert (d.ruleset, d.action) == ("live@2", "block"), (d, eng.output())
        assert "GENERATION_MISMATCH" not in eng.output()
        # explain replays the last event with generation 2's published bytes too
        seq = max(int(r["seq"]) for recs, _ in iter_merged(eng.raw["journal"]["dir"], schema.dtype,
                                                          schema.hash) for r in recs)
        rep = admin_request(eng.admin_bind, {"cmd": "explain", "seq": seq, "writer": 0}, 600_000)
        assert rep["ok"], rep
        assert rep["explanation"]["agrees"], rep["explanation"]


@pytest.fixture
def published(tmp_path):
    """Generation 1 of live.yaml as the supervisor publishes it (engine.reload.Rulesets):
    the compiled bytes kept in a 0700 run directory, then gen-1.json."""
    cfg = load_config()
    live = tmp_path / "live.yaml"
    ruleset(live, 2, when="amount > 100", action="block")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    spec, rs = ruleset_spec(cfg, (str(live),), None, [live.read_text()])
    spec["sha256"] = [rundir.write_rules_copy(run, t.encode()) for t in spec.pop("texts")]
    rundir.write_generation(run, 1, spec)
    return cfg, live, run, spec, rs


def test_load_generation_compiles_the_published_bytes(published):
    cfg, live, run, spec, rs = published
    ruleset(live, 3, when="amount < 0", action="review")         # edited, never reloaded
    got = load_generation(str(run), 1, cfg.schema)
    assert (got.source_hash, got.label, got.rule_ids) == (rs.source_hash, "live@2", ("r1",))
    assert got.where[0].startswith(f"{live}:")                    # the operator's path, not the copy's
    copy = run / f"rules-{spec['sha256'][0]}.yaml"
    assert copy.stat().st_mode & 0o777 == 0o600


def test_load_generation_refuses_a_kernel_or_bytes_other_than_published(published):
    cfg, live, run, spec, rs = published
    rundir.write_generation(run, 2, {**spec, "source_hash": "rules_" + "0" * 40})
    with pytest.raises(GenerationMismatch, match="GENERATION_MISMATCH: generation 2: compiled kernel"):
        load_generation(str(run), 2, cfg.schema)
    copy = run / f"rules-{spec['sha256'][0]}.yaml"
    os.chmod(copy, 0o600)
    copy.write_text(live.read_text().replace("amount > 100", "amount < 0"))   # damaged copy
    with pytest.raises(GenerationMismatch, match="do not hash to"):
        load_generation(str(run), 1, cfg.schema)
    rundir.write_generation(run, 3, {k: v for k, v in spec.items() if k != "sha256"})
    with pytest.raises(GenerationMismatch, match="compiled bytes are unusable"):
        load_generation(str(run), 3, cfg.schema)
    assert json.loads((run / "gen-1.json").read_text())["sha256"] == spec["sha256"]
