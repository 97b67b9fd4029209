"""Journal throughput: append per fsync policy and batch size, then replay (read + validate).

    python -m bench.journal [--dir DIR] [--seconds S] [--batches 64,1024]

Append throughput includes the msync each policy implies and the idle-path work: after every
batch the bench calls ``on_idle()`` (interval msync + zero-filling the next segment), as a
worker whose ring runs empty between batches would; ``--no-idle`` leaves that out, so rotation
and first-touch page faults land in the append. The p50/p99 columns time ``append_batch`` alone:
what the reply path pays. ``dirtied B/rec``: file bytes dirtied per record, zero-fill included
(``dirtied_bytes``), what the disk must write; a record is 136 B with the default schema. Replay reads files that are still in the
page cache: it measures the CPU cost of reading and validating, not the disk. Figures drift
up to 2x between runs on this machine: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np

from shm.runtime.config import load_config
from engine.journal import JournalConfig, JournalReader, JournalWriter, iter_merged, journal_dtype


def _fill(w: JournalWriter, n: int, rng) -> np.ndarray:
    b = w.empty_batch(n)
    ev = b["event"]
    for name in ev.dtype.names:
        if ev.dtype[name].kind in "ui":
            ev[name] = rng.integers(0, 1000, n)
        elif ev.dtype[name].kind == "f":
            ev[name] = rng.random(n)
    b["arrival_ns"] = time.time_ns()
    return b


def dirtied_bytes() -> int:
    """Bytes of file pages this thread has dirtied (write_bytes of /proc/thread-self/io: counted
    when a clean page, or a whole large folio, turns dirty, by a write() or by a store to a
    shared mapping): what writeback will write to the disk. 0 on tmpfs."""
    with open("/proc/thread-self/io") as f:
        return next(int(v) for k, v in (line.split(": ") for line in f) if k == "write_bytes")


def bench_append(root: str, schema, policy: str, batch: int, seconds: float, idle: bool) -> dict:
    d = tempfile.mkdtemp(dir=root, prefix=f"{policy}-{batch}-")
    cfg = JournalConfig(segment_bytes=64 << 20, fsync=policy, interval_ms=10)
    w = JournalWriter(d, schema.dtype, schema.hash, 0, cfg)
    b = _fill(w, batch, np.random.default_rng(1))
    lat = []
    wb0 = dirtied_bytes()
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        t = time.perf_counter_ns()
        w.append_batch(b)
        lat.append(time.perf_counter_ns() - t)
        if idle:
            w.on_idle()
        if len(lat) % 16 == 0 and time.perf_counter() > end:
            break
    el = time.perf_counter() - t0
    w.close()
    dirtied = dirtied_bytes() - wb0
    n = len(lat) * batch
    lat_us = np.array(lat) / 1e3
    shutil.rmtree(d)
    return {"policy": policy, "batch": batch, "events": n, "eps": n / el, "syncs": w.syncs,
            "p50_us": float(np.percentile(lat_us, 50)), "p99_us": float(np.percentile(lat_us, 99)),
            "mb_s": n * w.dtype.itemsize / el / 1e6, "dirtied_per_record": dirtied / n}


def bench_replay(root: str, schema, n: int) -> dict:
    d = tempfile.mkdtemp(dir=root, prefix="replay-")
    w = JournalWriter(d, schema.dtype, schema.hash, 0, JournalConfig(segment_bytes=64 << 20, fsync="none"))
    b = _fill(w, 65536, np.random.default_rng(2))
    for _ in range(n // len(b)):
        w.append_batch(b)
    w.close()
    r = JournalReader(d, schema.dtype, schema.hash)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        got = 0
        for batch in r.iter_batches(from_seq=1, batch_records=65536):
            got += len(batch)
        best = max(best, got / (time.perf_counter() - t0))
    shutil.rmtree(d)
    return {"events": got, "eps": best}


def bench_merged(root: str, schema, n: int, writers: int = 4) -> dict:
    d = tempfile.mkdtemp(dir=root, prefix="merged-")
    rng = np.random.default_rng(3)
    for wid in range(writers):
        w = JournalWriter(d, schema.dtype, schema.hash, wid, JournalConfig(segment_bytes=64 << 20, fsync="none"))
        b = _fill(w, 65536, rng)
        for i in range(n // writers // len(b)):
            b["arrival_ns"] = np.sort(rng.integers(0, 10**9, len(b))) + i * 10**9
            w.append_batch(b)
        w.close()
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        got = sum(len(r) for r, _ in iter_merged(d, schema.dtype, schema.hash))
        best = max(best, got / (time.perf_counter() - t0))
    shutil.rmtree(d)
    return {"events": got, "eps": best, "writers": writers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir under /tmp)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per append configuration")
    ap.add_argument("--batches", default="1,64,1024", help="batch sizes, comma separated")
    ap.add_argument("--replay-events", type=int, default=4_000_000)
    ap.add_argument("--config", default=None, help="engine config whose schema to journal")
    ap.add_argument("--no-idle", action="store_true", help="never call on_idle()")
    a = ap.parse_args(argv)
    schema = load_config(a.config).schema
    root = tempfile.mkdtemp(prefix="bench-journal-", dir=a.dir)
    try:
        print(f"journal record: {schema.record_size} B event -> "
              f"{journal_dtype(schema.dtype).itemsize} B record; dir {root}")
        print(f"{'policy':<12} {'batch':>6} {'events/s':>12} {'MB/s':>8} {'p50 us':>9} {'p99 us':>9} "
              f"{'syncs':>7} {'vs none':>8} {'dirtied B/rec':>14}")
        for batch in [int(x) for x in a.batches.split(",")]:
            base = None
            for policy in ("none", "interval_ms", "batch"):
                r = bench_append(root, schema, policy, batch, a.seconds, not a.no_idle)
                base = base or r["eps"]
                print(f"{policy:<12} {batch:>6} {r['eps']:>12,.0f} {r['mb_s']:>8.0f} {r['p50_us']:>9.1f} "
                      f"{r['p99_us']:>9.1f} {r['syncs']:>7} {r['eps'] / base:>7.2f}x "
                      f"{r['dirtied_per_record']:>14.0f}", flush=True)
        r = bench_replay(root, schema, a.replay_events)
        print(f"replay (read + validate, page cache): {r['events']:,} events, {r['eps']:,.0f} events/s "
              f"({r['eps'] / 1e6:.2f}x the 1,000,000 events/s target)")
        r = bench_merged(root, schema, a.replay_events)
        print(f"replay merged by arrival over {r['writers']} writers: {r['events']:,} events, "
              f"{r['eps']:,.0f} events/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
