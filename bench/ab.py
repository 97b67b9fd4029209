"""Before/after: the latency bench (what `make bench` runs) and the kernel bench on two
checkouts, alternating A B, B A, A B ... in one run, so the machine's drift and any advantage
of going first or second fall on both sides (two runs of one commit differed by 20% between
the slots of A B A B).

    python -m bench.ab --before /path/to/old/checkout [--after .] [--rounds 3]

Each checkout runs its own code (``python -m`` from its directory, this interpreter); the
first round of each also pays its cold Numba compile, so it is run once unrecorded first.
Prints per round the engine's p50/p99/p99.9 (ms) and requests/s from bench.latency, and the
kernel's ns/event for 100 rules at batch 1024 from bench.kernel --quick, then the median of
each figure per side and the median of the after/before ratios taken pair by pair.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LATENCY = ("p50_ms", "p99_ms", "p99.9_ms", "requests_per_s")
KERNEL_RULES, KERNEL_BATCH = 100, "1024"


def latency(checkout: Path, out: Path, duration_s: float) -> dict:
    rc = subprocess.run([sys.executable, "-m", "bench.latency", "--clients", "100", "--duration",
                         str(duration_s), "--no-progress", "--json", str(out)],
                        cwd=checkout, stdout=subprocess.DEVNULL).returncode
    if rc not in (0, 1):                # 1: the run's P99 missed the acceptance bar, still a figure
        raise RuntimeError(f"bench.latency in {checkout} exited {rc}")
    phase = json.loads(out.read_text())["phases"]["engine"]
    return {k: phase[k] for k in LATENCY}


def kernel(checkout: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "bench.kernel", "--quick", "--json", str(out)],
                   cwd=checkout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = json.loads(out.read_text())["rows"]
    row = next(r for r in rows if r["rules"] == KERNEL_RULES and r["ruleset"].startswith("synthetic"))
    return {"kernel_ns_per_event": row["batches"][KERNEL_BATCH]["kernel_ns_per_event"]}


def one(checkout: Path, tmp: Path, duration_s: float) -> dict:
    return {**latency(checkout, tmp / "lat.json", duration_s), **kernel(checkout, tmp / "kern.json")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="the old checkout")
    ap.add_argument("--after", default=Path("."), type=Path, help="the new checkout (default .)")
    ap.add_argument("--rounds", type=int, default=3, help="recorded rounds per side (default 3)")
    ap.add_argument("--duration", type=float, default=30.0, metavar="S",
                    help="latency bench seconds per round (default 30, as make bench)")
    a = ap.parse_args(argv)
    sides = {"before": a.before.resolve(), "after": a.after.resolve()}
    figures = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench_ab_") as tmp:
        for side, path in sides.items():              # cold compiles, unrecorded
            print(f"warm-up: {side} ({path})", file=sys.stderr, flush=True)
            one(path, Path(tmp), 2.0)
        for k in range(a.rounds):
            order = list(sides.items())
            for side, path in order if k % 2 == 0 else order[::-1]:   # neither side always first
                figures[side].append(one(path, Path(tmp), a.duration))
                print(f"round {k + 1} {side:6} " + "  ".join(f"{n}={v:.4g}" for n, v in figures[side][-1].items()),
                      flush=True)
    print(f"\n{'figure':22} {'before (median)':>16} {'after (median)':>15} {'after/before (median of pairs)':>31}")
    for name in figures["before"][0]:
        b = [f[name] for f in figures["before"]]
        af = [f[name] for f in figures["after"]]
        ratios = [x / y for x, y in zip(af, b) if y]
        print(f"{name:22} {statistics.median(b):>16.4g} {statistics.median(af):>15.4g} "
              f"{statistics.median(ratios):>20.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
