"""The worker's per-batch cost in-process, where the machine's noise matters least.

    python -m bench.worker_step [--batches 1,8,64] [--repeats 3]

Two tables, CPU-bound, no sockets:

- **journal append per batch**: ``JournalWriter.append_columns`` (six numpy columns staged,
  then one copy) against ``JournalWriter.append_slots`` (records straight from the ring
  slots, the worker's path), into a segment whose pages are faulted in first, so the copies
  are timed and not the first touch of fresh pages (the engine's housekeeping thread
  pre-faults them).
- **worker step per batch**: ``bench.alloc.worker_loop``, the worker's own
  ``BatchProcessor.process`` over real shared-memory rings with the default config's kernel
  and a real journal: publish a batch as the ingress does, drain, process, release, drain
  the responses.

Each figure is the best of ``--repeats`` runs of 20,000 events (at least 200 batches).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from bench.alloc import worker_loop
from engine.journal import JournalConfig, JournalWriter
from shm.runtime.config import load_config
from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype


def _best_us(fn, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t)
    return best / calls * 1e6


def journal_append(cfg, batches, repeats: int) -> list[tuple[int, float, float]]:
    """(batch, append_columns us, append_slots us) per batch size."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="risk-engine-step-") as d:
        w = JournalWriter(d, cfg.schema.dtype, cfg.schema.hash,
                          config=JournalConfig(segment_bytes=256 << 20, fsync="none"))
        try:
            w._raw[:] = 0                         # fault every page in: time copies, not faults
            for n in batches:
                req = np.zeros(n, request_slot_dtype(cfg.schema.dtype))
                out = np.zeros(n, RESPONSE_SLOT_DTYPE)
                out_words, req_w = out.view(np.uint64).reshape(n, -1), req.dtype.itemsize // 8
                calls = max(200, 20_000 // n)

                def columns():
                    w.append_columns(req["event"], req["arrival_ns"], out["action"],
                                     out["flags"], out["score"], out["generation"])

                def slots():
                    w.append_slots(req.view(np.uint64), req_w, out_words, n)

                rows.append((n, _best_us(columns, calls, repeats), _best_us(slots, calls, repeats)))
        finally:
            w.close()
    return rows


def worker_step(cfg, batches, repeats: int) -> list[tuple[int, float]]:
    """(batch, us per BatchProcessor step) per batch size."""
    rows = []
    for n in batches:
        step, close, _ = worker_loop(cfg, n, f"step{os.getpid() % 100000}")
        try:
            calls = max(200, 20_000 // n)
            for _ in range(calls // 4):
                step()
            rows.append((n, _best_us(step, calls, repeats)))
        finally:
            close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.worker_step", description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,64", help="events per batch, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    batches = [int(x) for x in a.batches.split(",")]
    cfg = load_config(None)
    print(f"best of {a.repeats} runs of 20,000 events (at least 200 batches), us per batch")
    print(f"{'batch':>6} {'append_columns':>15} {'append_slots':>13} {'ratio':>6}")
    for n, c, s in journal_append(cfg, batches, a.repeats):
        print(f"{n:>6} {c:>15.2f} {s:>13.2f} {s / c:>5.2f}x")
    print(f"{'batch':>6} {'worker step (BatchProcessor, rings, journal)':>46}")
    for n, t in worker_step(cfg, batches, a.repeats):
        print(f"{n:>6} {t:>46.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
