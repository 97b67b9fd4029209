"""``python -m bench.explain [--events N] [--snapshot-every K]``: time to explain the LAST event
of an N-event journal (docs/EXPLAIN.md). Target (issue 20): under 2 s for 10,000,000 events.

The journal is written first with the real JournalWriter, one writer, the bundled default
config (six features, a list, account state); every event is decided by the real kernel in
order, so the recorded decisions are real ones, and a snapshot of the tables (the engine's
SnapshotStore, journal_seq = the last appended seq) is written every K events. Then:
- ``explain, one-shot CLI``: `risk-engine explain --seq N` in a fresh process, end to end
  (imports, kernel cache load, snapshot pick and load, replay after it, reads, trace);
- ``explain, warm Explainer``: the same event with the rulesets already compiled, best of 3.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.events import random_records
from engine.explain import Explainer
from engine.journal import JournalConfig, JournalWriter
from engine.snapshot import SnapshotStore
from rules import compile_ruleset
from rules.features import feature_set_for
from shm.runtime.config import load_config

CHUNK = 65536


def build(d: str, events: int, every: int, keys: int):
    """Write the journal and the snapshots into ``d``; returns (cfg, journal dir, snapshot dir, last seq)."""
    cfg = load_config()
    jdir, sdir = os.path.join(d, "journal"), os.path.join(d, "snapshots")
    fs = feature_set_for(cfg)
    rs = compile_ruleset(list(cfg.rules.files), cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=fs)
    store = SnapshotStore(sdir, keep=3)
    buf = rs.new_buffers(CHUNK)
    base = time.monotonic_ns() - events * 1000     # the ingress's clock for arrival_ns
    since = 0
    with JournalWriter(jdir, cfg.schema.dtype, cfg.schema.hash, writer_id=0,
                       config=JournalConfig(fsync="none")) as jw:
        for k, lo in enumerate(range(0, events, CHUNK)):
            n = min(CHUNK, events - lo)
            ev = random_records(cfg.schema, n, seed=k, n_accounts=keys)
            arrival = base + np.arange(lo, lo + n, dtype=np.int64) * 1000     # 1 us apart
            out = rs.evaluate(ev, buf[0], buf[1], buf[2], buf[3], arrival)[:n]
            jw.append_columns(ev, arrival, out["action"], out["flags"], out["score"], 1)
            since += n
            if since >= every:
                jw.sync()
                store.write(dict(zip(fs.arg_names(), fs.arrays())), {0: jw.last_seq}, generation=1)
                since = 0
        last = jw.last_seq
    return cfg, jdir, sdir, last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.explain")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--snapshot-every", type=int, default=500_000, metavar="K")
    ap.add_argument("--keys", type=int, default=100_000, help="accounts drawn from (default 100000)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as d:
        t0 = time.perf_counter()
        cfg, jdir, sdir, last = build(d, a.events, a.snapshot_every, a.keys)
        print(f"journal of {last:,} events, a snapshot every {a.snapshot_every:,}: built in "
              f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "engine.cli", "explain", "--journal", jdir,
                            "--snapshots", sdir, "--seq", str(last), "--json"],
                           capture_output=True, text=True, timeout=600)
        cli_s = time.perf_counter() - t0
        if p.returncode:
            print(p.stderr, file=sys.stderr)
            return 1
        ex = Explainer(cfg, jdir, snapshot_dir=sdir)
        times, e = [], None
        for _ in range(3):
            t0 = time.perf_counter()
            e = ex.explain(last, 0)
            times.append(time.perf_counter() - t0)
        print(f"explain seq {last:,} (replayed {e.replay['records']:,} records after "
              f"{os.path.basename(e.replay['snapshot'] or 'no snapshot')}; agrees with the record: {e.agrees})")
        print(f"  explain, one-shot CLI (fresh process): {cli_s:.2f} s")
        print(f"  explain, warm Explainer: {min(times):.2f} s (best of 3; {', '.join(f'{t:.2f}' for t in times)})")
        print("  target: under 2 s at 10,000,000 events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
