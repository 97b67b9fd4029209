"""``python -m bench.replay [--events N] [--keys N]``: replay throughput (events/s) of `risk-engine replay`
with the bundled example rules, baseline and candidate (the same rules: two kernel passes per
batch, each with its own feature tables rebuilt from the events), over a journal of N synthetic
events written first with the real writer. ``--no-features``: the 102 stateless rules only.
Target (issue 4): >= 1,000,000 events/s on this machine."""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace

import numpy as np

from bench.events import random_events
from engine.journal import JournalConfig, JournalWriter
from engine.replay import replay
from shm.runtime.config import load_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.replay")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--keys", type=int, default=0, metavar="N",
                    help="draw account_id, card_id and device_id from N keys each (default: every "
                         "event a new key, so every feature update inserts, and evicts once a "
                         "table is full: the worst case)")
    ap.add_argument("--no-features", action="store_true",
                    help="the 102 stateless example rules only (payments + pretrade), no feature tables")
    a = ap.parse_args(argv)
    cfg = load_config()
    if a.no_features:
        cfg = replace(cfg, features={}, lists={}, state={},
                      rules=replace(cfg.rules, files=cfg.rules.files[:2]))
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        per = a.events // a.writers
        for w in range(a.writers):
            with JournalWriter(d, cfg.schema.dtype, cfg.schema.hash, writer_id=w,
                               config=JournalConfig(fsync="none")) as jw:
                for lo in range(0, per, 65536):
                    ev = random_events(rng, cfg.schema, min(65536, per - lo))
                    n = len(ev)
                    if a.keys:
                        for f in ("account_id", "card_id", "device_id"):
                            ev[f] = rng.integers(1, a.keys + 1, n)
                    jw.append_columns(ev, np.arange(lo, lo + n, dtype=np.int64) * 1000 + w,
                                      np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n), 1)
        replay(d, cfg, list(cfg.rules.files), batch=65536)          # warm (kernel cache loads)
        best = max((replay(d, cfg, list(cfg.rules.files), batch=65536) for _ in range(3)),
                   key=lambda r: r.events_per_s)
    keys = f"{a.keys:,} keys per key field" if a.keys else "a new key per event"
    print(f"replay of {best.events} events ({keys}), {a.writers} writers merged, 2 kernels x "
          f"{best.baseline}: {best.events_per_s / 1e6:.2f} M events/s (best of 3; target >= 1.00)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
