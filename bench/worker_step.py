"""The worker's per-batch cost in-process, where the machine's noise matters least.

    python -m bench.worker_step [--batches 1,8,64] [--repeats 3]

Two tables, CPU-bound, no sockets:

- **journal append per batch**: ``JournalWriter.append_columns`` (six numpy columns staged,
  then one copy) against ``JournalWriter.append_slots`` (records straight from the ring
  slots, the worker's path), into a segment whose pages are faulted in first, so the copies
  are timed and not the first touch of fresh pages (the engine's housekeeping thread
  pre-faults them).
- **worker step per batch**: ``bench.alloc.worker_loop`` over real shared-memory rings with
  the default config's kernel and a real journal: publish a batch as the ingress does, then
  the worker's step (the Python path, ``BatchProcessor.process``: drain, process, release;
  or the compiled one, engine.worker_fast, as the worker runs it), then drain the responses.
  ``rings alone`` is the same publish and drains with no worker step (requests drained and
  released unread): what the step's figures include besides the worker.
  The paths alternate, ``--repeats`` rounds each; wall is the best round, CPU the thread's
  CPU time in that round (what a loaded machine changes least).

Each figure is per batch, over runs of 20,000 events (at least 200 batches).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from bench.alloc import worker_loop
from engine.journal import JournalConfig, JournalWriter
from shm.doorbell import EventfdDoorbell
from shm.rings import EngineRings
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


def _best_us_cpu(fn, calls: int) -> tuple[float, float]:
    """(wall us, thread CPU us) per call over ``calls`` calls."""
    t, c = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6, (time.thread_time() - c) / calls * 1e6


PATHS = ("rings alone", "python step", "compiled step")


def worker_step(cfg, batches, repeats: int) -> list[tuple[int, dict]]:
    """(batch, {path: (wall us, CPU us) of its best round}) per batch size."""
    rows = []
    for n in batches:
        tag = f"step{os.getpid() % 100000}"
        py_step, py_close, _ = worker_loop(cfg, n, tag + "p")
        fa_step, fa_close, _ = worker_loop(cfg, n, tag + "f", fast=True)
        ring_step, ring_close = rings_alone(cfg, n, tag + "r")
        steps = dict(zip(PATHS, (ring_step, py_step, fa_step)))
        try:
            calls = max(200, 20_000 // n)
            for step in steps.values():
                for _ in range(calls // 4):
                    step()
            best = {k: (float("inf"), 0.0) for k in PATHS}
            for _ in range(repeats):
                for k, step in steps.items():
                    r = _best_us_cpu(step, calls)
                    best[k] = min(best[k], r)
            rows.append((n, best))
        finally:
            py_close()
            fa_close()
            ring_close()
    return rows


def rings_alone(cfg, n: int, instance: str):
    """(step, close): worker_loop's publish and drains, with no worker step between."""
    cap = max(64, 1 << (2 * n - 1).bit_length())
    cfg = dataclasses.replace(cfg, instance=instance, rings=dataclasses.replace(cfg.rings, capacity=cap))
    efd = EventfdDoorbell.create()
    rings = EngineRings.create(cfg, os.getpid(), 0, efd)
    req, resp = rings.request, rings.response
    slots = np.zeros(n, request_slot_dtype(cfg.schema.dtype))
    arrival = slots["arrival_ns"]

    def step() -> None:
        arrival[:] = time.monotonic_ns()
        req.try_publish(slots)
        v, _ = req.try_drain(n)
        req.release(len(v))
        r1, r2 = resp.try_drain(resp.capacity)
        resp.release(len(r1) + len(r2))

    def close() -> None:
        rings.close()
        rings.unlink()
        efd.close()
    return step, close


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
    print("worker step per batch (rings, kernel, journal), us: wall of the best round / its CPU")
    print(f"{'batch':>6}" + "".join(f" {k:>21}" for k in PATHS) + f" {'compiled/python':>16}")
    for n, best in worker_step(cfg, batches, a.repeats):
        cells = "".join(f" {w:>10.2f} / {c:>8.2f}" for w, c in (best[k] for k in PATHS))
        ratio = best["compiled step"][1] / best["python step"][1] if best["python step"][1] else float("nan")
        print(f"{n:>6}{cells} {ratio:>15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
