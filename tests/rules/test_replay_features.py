"""Replay (engine.replay) rebuilds the features from the journal's events and arrival times,
from scratch per ruleset: a velocity rule fires on the replayed stream as it would live."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from shm.runtime.config import parse_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "rules" / "examples"


def _config(tmp_path, files):
    raw = yaml.safe_load((REPO / "engine" / "default.yaml").read_text())
    raw.update(yaml.safe_load((EXAMPLES / "features_block.yaml").read_text()))
    raw["lists"]["blocked_ips"]["file"] = str(EXAMPLES / "blocked_ips.txt")
    raw["rules"]["files"] = [str(f) for f in files]
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return parse_config(raw, str(p))


def test_replay_rebuilds_features(tmp_path, kernel_cache, monkeypatch):
    from engine.journal import JournalWriter
    from engine.replay import replay
    monkeypatch.setenv("RISK_ENGINE_CACHE", str(kernel_cache))
    cfg = _config(tmp_path, [EXAMPLES / "payments_velocity.yaml"])
    n = 30
    ev = np.zeros(n, cfg.schema.dtype)
    ev["account_id"], ev["card_id"], ev["device_id"], ev["amount"] = 1, 2, 3, 10.0
    ev["account_id"][::2] = 5                      # 15 payments each for accounts 1 and 5
    arrival = 10**15 + np.arange(n, dtype=np.int64) * 1_000_000_000    # one a second
    w = JournalWriter(str(tmp_path / "j"), cfg.schema.dtype, cfg.schema.hash, writer_id=0)
    w.append_columns(ev, arrival, np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n), 1)
    w.close()
    rep = replay(str(tmp_path / "j"), cfg, [EXAMPLES / "payments_velocity.yaml"], batch=7)
    # per account the 6th..15th payment of the minute: 10 each
    assert rep.hits_before["velocity_1m"] == rep.hits_after["velocity_1m"] == 20
    assert rep.changed[0, 1] == 20 and rep.changed[0, 0] == 10
