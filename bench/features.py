"""Feature storage cost per event versus the number of keys (OneWorkerBatchedFeatures).

    python -m bench.features [--keys 1000,1000000,10000000] [--events 2000000] [--no-hugepages]

Four features per event, as a fused rule kernel would run them, in batches of 256 events:
pass 1 prefetches every event's home slot of every table, pass 2 reads the four features
(each read includes the current event), makes a dummy decision and commits the four updates.

    count_1m  count by account, 60 s / 60 buckets    256 B/key
    sum_1h    sum of amount by card, 1 h / 12 buckets 112 B/key
    max_10m   max amount by account, 10 m / 10 buckets 96 B/key
    age       first seen by device                     24 B/key

Each table holds capacity = 1.25 x keys slots and is pre-filled with every key; events draw
keys uniformly. Prints ns per event per key count, the ratio to the smallest key count
(target <= 1.5 at 1e7 vs 1e3), and bytes per key. Buffers are anonymous mmaps with
MADV_HUGEPAGE (transparent huge pages, if the kernel allows) and are freed after each size.
"""
from __future__ import annotations

import argparse
import mmap
import time

import numpy as np
from numba import njit

from engine.features import layout, table as T
from engine.features.scalar import _read_age, _update_age
from engine.features.table import _prefetch_key
from engine.features.windows import _read_count, _read_max, _read_sum, _update_count, _update_max, _update_sum

PROBE = 16
NB_C, BMS_C = 60, 1000
NB_S, BMS_S = 12, 300_000
NB_M, BMS_M = 10, 60_000
SW_C = layout.slot_words("count", NB_C)
SW_S = layout.slot_words("sum", NB_S)
SW_M = layout.slot_words("max", NB_M)
SW_A = layout.slot_words("age")
BATCH = 256
MUL = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True)
def _run(tc, ts, tm, ta, cap, acct, card, dev, amount, now, prefetch):
    n = acct.shape[0]
    blocked = 0
    for start in range(0, n, BATCH):
        end = min(n, start + BATCH)
        if prefetch:
            for i in range(start, end):
                _prefetch_key(tc, acct[i], cap, SW_C)
                _prefetch_key(ts, card[i], cap, SW_S)
                _prefetch_key(tm, acct[i], cap, SW_M)
                _prefetch_key(ta, dev[i], cap, SW_A)
        for i in range(start, end):
            c = _read_count(tc, cap, SW_C, PROBE, NB_C, BMS_C, acct[i], now[i], 0.0)
            s = _read_sum(ts, cap, SW_S, PROBE, NB_S, BMS_S, card[i], now[i], amount[i])
            m = _read_max(tm, cap, SW_M, PROBE, NB_M, BMS_M, acct[i], now[i], amount[i])
            a = _read_age(ta, cap, SW_A, PROBE, dev[i], now[i])
            if c > 50 or s > 1e9 or m > 1e9 or a > 10**9:
                blocked += 1
            _update_count(tc, cap, SW_C, PROBE, NB_C, BMS_C, acct[i], now[i], 0.0)
            _update_sum(ts, cap, SW_S, PROBE, NB_S, BMS_S, card[i], now[i], amount[i])
            _update_max(tm, cap, SW_M, PROBE, NB_M, BMS_M, acct[i], now[i], amount[i])
            _update_age(ta, cap, SW_A, PROBE, dev[i], now[i])
    return blocked


def _alloc(nwords: int, hugepages: bool):
    mm = mmap.mmap(-1, nwords * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hugepages and hasattr(mmap, "MADV_HUGEPAGE"):
        mm.madvise(mmap.MADV_HUGEPAGE)
    return mm, np.frombuffer(mm, dtype=np.uint64)


def _events(nkeys: int, n: int, seed: int, t0_ms: int):
    rng = np.random.default_rng(seed)
    acct = rng.integers(0, nkeys, n).astype(np.uint64) * MUL
    card = rng.integers(0, nkeys, n).astype(np.uint64) * MUL + np.uint64(1)
    dev = rng.integers(0, nkeys, n).astype(np.uint64) * MUL + np.uint64(2)
    amount = rng.random(n) * 500.0
    now = t0_ms + np.arange(n, dtype=np.int64) // 10            # 10 events per ms
    return acct, card, dev, amount, now


def measure(nkeys: int, nevents: int, hugepages: bool) -> dict:
    cap = int(nkeys * 1.25) + 1
    maps, tabs = [], []
    for sw in (SW_C, SW_S, SW_M, SW_A):
        mm, t = _alloc(T.table_words(cap, sw), hugepages)
        T.init_table(t, cap, sw)
        maps.append(mm)
        tabs.append(t)
    # pre-fill every key once (keys in order, so every table holds all nkeys)
    k = np.arange(nkeys, dtype=np.uint64) * MUL
    fill = (k, k + np.uint64(1), k + np.uint64(2), np.zeros(nkeys), np.zeros(nkeys, np.int64))
    t0 = time.perf_counter()
    _run(*tabs, cap, *fill, True)
    fill_s = time.perf_counter() - t0
    out = {"keys": nkeys, "fill_s": fill_s}
    for prefetch in (False, True):
        ev = _events(nkeys, nevents, 7 + prefetch, 1000)
        t0 = time.perf_counter()
        _run(*tabs, cap, *ev, prefetch)
        dt = time.perf_counter() - t0
        out["ns_prefetch" if prefetch else "ns_plain"] = dt / nevents * 1e9
    out["counters"] = T.counters(tabs[0])
    out["evictions"] = sum(T.counters(t)["evictions"] for t in tabs)
    del tabs, t, fill, k
    for mm in maps:
        mm.close()                       # free the memory now (views are gone)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="1000,1000000,10000000")
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--no-hugepages", action="store_true")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.keys.split(",")]
    bpk = {"count_1m": 8 * SW_C, "sum_1h": 8 * SW_S, "max_10m": 8 * SW_M, "age": 8 * SW_A}
    print("bytes per key: " + ", ".join(f"{k}={v}" for k, v in bpk.items())
          + f"; all four: {sum(bpk.values())} B/key x 1.25 capacity")
    measure(100, 10_000, False)         # compile / warm up
    base = None
    print(f"{'keys':>10} {'ns/event':>10} {'no-prefetch':>12} {'ratio':>7} {'evictions':>10} {'fill':>6} {'MiB':>8}")
    for n in sizes:
        r = measure(n, a.events, not a.no_hugepages)
        base = base or r["ns_prefetch"]
        mib = sum(bpk.values()) * (int(n * 1.25) + 1) / 2**20
        print(f"{n:>10} {r['ns_prefetch']:>10.0f} {r['ns_plain']:>12.0f} {r['ns_prefetch'] / base:>7.2f} "
              f"{r['evictions']:>10} {r['counters']['fill_ratio']:>6.2f} {mib:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
