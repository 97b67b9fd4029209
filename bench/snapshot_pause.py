"""``python -m bench.snapshot_pause``: how long a snapshot holds the workers.

1. The copy itself, in this process: ``--mib`` MiB copied into a fresh array (what the
   supervisor did before) and into a reused buffer whose pages are already faulted in (what
   it does now), ``--repeat`` times each, every time printed: a pause is judged by its worst
   (glibc may hand a freed block back for the next fresh copy, which then looks cheap).
2. A running engine (default config, started here) under load (``python -m bench.latency
   --clients N --no-echo``; ``--clients`` 4 by default, 100 keeps both CPUs busy):
   ``--snapshots`` snapshots through the admin plane, and after each the engine's own
   ``risk_snapshot_pause_seconds``, with the copy's part of it and how often the supervisor
   was preempted during the hold (the snapshot log).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from bench.engine_proc import EngineProcess


def copy_ms(mib: int, repeat: int) -> tuple[list, list]:
    src = np.ones(mib << 20, np.uint8)
    fresh, faulted = [], []
    buf = np.empty_like(src)
    buf[::4096] = 0
    for _ in range(repeat):
        t = time.perf_counter()
        dst = src.copy()
        fresh.append(time.perf_counter() - t)
        del dst
        t = time.perf_counter()
        np.copyto(buf, src)
        faulted.append(time.perf_counter() - t)
    return [t * 1e3 for t in fresh], [t * 1e3 for t in faulted]


def engine_pauses(n: int, gap_s: float, clients: int = 4) -> list[tuple[float, str]]:
    eng = EngineProcess(workers=None, own_session=False).start()
    out = []
    try:
        load = subprocess.Popen([sys.executable, "-m", "bench.latency", "--target", eng.endpoint,
                                 "--no-echo", "--clients", str(clients), "--duration", str(n * gap_s + 4),
                                 "--no-progress"], stdout=subprocess.DEVNULL)
        time.sleep(3)
        for _ in range(n):
            r = subprocess.run([sys.executable, "-m", "engine.cli", "admin", "--instance",
                                eng.instance, "snapshot"], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"snapshot failed: {r.stdout}{r.stderr}")
            stats = eng.stats() or {}
            last = (stats.get("log", {}).get("snapshots") or [{}])[-1]
            out.append((stats["risk_snapshot_pause_seconds"][0]["value"] * 1e3,
                        f"copy {last.get('copy_ns', 0) / 1e6:.1f} ms, preempted {last.get('hold_preempted', '?')}"))
            time.sleep(gap_s)
        load.wait(120)
    finally:
        eng.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.snapshot_pause", description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=70, help="copy size for part 1 (default 70)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=4)
    ap.add_argument("--gap", type=float, default=1.0, metavar="S", help="seconds between snapshots")
    ap.add_argument("--clients", type=int, default=4, help="load clients (default 4; 100: both CPUs busy)")
    a = ap.parse_args(argv)
    fresh, faulted = copy_ms(a.mib, a.repeat)
    print(f"copy of {a.mib} MiB into a fresh array: " + ", ".join(f"{t:.1f}" for t in fresh) + " ms")
    print(f"copy of {a.mib} MiB into a faulted buffer: " + ", ".join(f"{t:.1f}" for t in faulted) + " ms")
    pauses = engine_pauses(a.snapshots, a.gap, a.clients)
    print(f"engine snapshot holds under load, {a.clients} clients (risk_snapshot_pause_seconds; "
          f"the copy's part and preemptions from the snapshot log):")
    print("  " + ", ".join(f"{p:.1f} ms ({n})" for p, n in pauses))
    print(f"  max {max(p for p, _ in pauses):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
