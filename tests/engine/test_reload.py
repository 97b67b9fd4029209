"""Rules replaced while serving: a new generation swaps in between batches, a refused
ruleset keeps the old one serving and is counted, the previous version can be restored."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import yaml

from engine.admin import request
from shm.runtime.config import load_config
from ingress.client import Client
from ingress.jsonevents import EventConverter
from bench.engine_proc import EngineProcess
from bench.events import random_events
from tests.engine.test_metrics import scrape, value


def ruleset(path, version, when="amount >= 0", action="review"):
    path.write_text(yaml.safe_dump({"ruleset": "live", "version": version,
                                    "rules": [{"id": "r1", "when": when, "action": action, "score": 5}]}))
    return str(path)


def decide(eng, schema, n=3):
    recs = random_events(np.random.default_rng(1), schema, n)
    with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0, transport="json") as c:
        return c.evaluate_batch(EventConverter(schema).to_events(recs))


def wait_label(eng, schema, label, timeout_s=120):
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if all(d.ruleset == label for d in decide(eng, schema)):
            return True
        time.sleep(0.2)
    return False


def test_reload_refuse_and_restore(tmp_path):
    schema = load_config().schema
    v1 = ruleset(tmp_path / "v1.yaml", 1)
    eng = EngineProcess(tmp_path, workers=1, overrides={"rules": {"files": [v1]},
                                                         "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        admin = eng.admin_bind
        d = decide(eng, schema)
        assert all(x.ruleset == "live@1" and x.action == "review" for x in d)
        # a new version through the CLI (a request file; it waits for the outcome)
        v2 = ruleset(tmp_path / "v2.yaml", 2, action="block")
        out = subprocess.run([sys.executable, "-m", "engine.cli", "reload", "--instance", eng.instance,
                              "--rules", v2], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert wait_label(eng, schema, "live@2")
        assert all(x.action == "block" for x in decide(eng, schema))
        # a broken ruleset is refused with its position; generation 2 keeps serving
        bad = tmp_path / "bad.yaml"
        ruleset(bad, 3, when="amount.__class__ > 0")
        r = request(admin, {"cmd": "reload", "files": [str(bad)]}, 120_000)
        assert not r["ok"] and r["error"]["code"] == "RULESET_REFUSED"
        assert "bad.yaml:" in r["error"]["message"]
        assert all(x.ruleset == "live@2" for x in decide(eng, schema))
        assert value(scrape(eng.metrics_url), "risk_ruleset_reload_errors_total") == 1
        # restore the previous generation's files
        r = request(admin, {"cmd": "reload", "previous": True}, 120_000)
        assert r["ok"], r
        assert wait_label(eng, schema, "live@1")
        m = scrape(eng.metrics_url)
        assert value(m, "risk_ruleset_info", name="live", version="1", generation=str(r["generation"])) == 1
