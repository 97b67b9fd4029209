"""Every decision the engine answers is in its journal, in order, with the same decision."""
from __future__ import annotations

import numpy as np

from shm.runtime.config import load_config
from engine.journal import JournalReader, list_writers
from ingress.client import Client
from bench.engine_proc import EngineProcess
from bench.events import random_events

ACTIONS = {"allow": 0, "review": 1, "block": 2}


def test_answered_decisions_are_journaled(tmp_path):
    schema = load_config().schema
    rng = np.random.default_rng(11)
    sent, got = [], []
    eng = EngineProcess(tmp_path, workers=2, metrics=False,
                        overrides={"journal": {"dir": str(tmp_path / "j"), "fsync": "batch"},
                                   "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0) as c:
            for i in range(40):
                recs = random_events(rng, schema, 1 + i % 5)
                sent.append(recs)
                got.extend(c.evaluate_batch(recs))
    recs = np.concatenate(sent)
    journaled = []
    for w in list_writers(str(tmp_path / "j")):
        r = JournalReader(str(tmp_path / "j"), schema.dtype, schema.hash, writer_id=w).read_all()
        assert (np.diff(r["seq"]) == 1).all() and r["seq"][0] == 1
        journaled.append(r)
    j = np.concatenate(journaled)
    assert len(j) == len(recs)
    by_event = {e.item(): (int(a), float(s)) for e, a, s in zip(j["event"], j["action"], j["score"])}
    for rec, d in zip(recs, got):
        assert by_event[rec.item()] == (ACTIONS[d.action], d.score)


def test_replay_backtests_a_candidate(tmp_path):
    """Journal real traffic, then replay it with a candidate that adds a catch-all block rule
    and drops nothing: every recorded non-block decision moves to block."""
    import subprocess
    import sys
    import yaml
    from shm.runtime.config import DEFAULT_CONFIG
    schema = load_config().schema
    eng = EngineProcess(tmp_path, workers=2, metrics=False,
                        overrides={"journal": {"dir": str(tmp_path / "j")},
                                   "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0) as c:
            got = c.evaluate_batch(random_events(np.random.default_rng(12), schema, 300))
    cand = tmp_path / "cand.yaml"
    cand.write_text(yaml.safe_dump({"ruleset": "catchall", "version": 1, "rules": [
        {"id": "block_all", "when": "amount >= 0 or amount < 0", "action": "block", "score": 1}]}))
    out = subprocess.run([sys.executable, "-m", "engine.cli", "replay", "--journal", str(tmp_path / "j"),
                          "--rules", str(cand), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "replayed 300 events" in out.stdout
    recorded = {a: sum(d.action == a for d in got) for a in ACTIONS}
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in out.stdout.splitlines()
            if line.split() and line.split()[0] in ACTIONS and len(line.split()) == 4}
    for a in ACTIONS:
        assert rows[a] == [0, 0, recorded[a]], (a, rows)
    assert f"block_all" in out.stdout and "300" in out.stdout
