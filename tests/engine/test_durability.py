"""Every decision the engine answers is in its journal, in order, with the same decision."""
from __future__ import annotations

import numpy as np

from engine.config import load_config
from engine.journal import JournalReader, list_writers
from ingress.client import Client
from tests.engine.engine_proc import EngineProcess
from tests.engine.test_e2e import random_events

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
