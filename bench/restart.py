"""``python -m bench.restart``: how long a worker killed under load is out (issue 7: the
supervisor restarts it within 1 s, its shard's state rebuilt from snapshot + journal).

Starts the engine (bench.engine_proc), sends an open-loop stream at ``--rate`` from one
DEALER (bench.overload's sender) and SIGKILLs worker 0 ``--kill-after`` seconds in. The
default kill lands 5 s before the second snapshot (``snapshot.interval_s`` = 60 s in the
bundled config, so 115 s in): the worst case, a snapshot to load and the most journal to
replay after it. Prints the
supervisor's own account (death noticed -> successor's first loop, split into feature
rebuild and process start; risk_worker_restart_seconds), and the sender's: every request
answered or not, by kind (decided, WORKER_LOST or TIMEOUT defaults, OVERLOADED), and the
latencies. Exit 1 when a request went unanswered or the restart took over ``--bound`` s.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import threading
import time

import numpy as np
import psutil

from bench.engine_proc import EngineProcess, read_stats
from bench.overload import run
from shm.runtime.config import load_config


def _worker_pid(engine_pid: int, index: int = 0) -> int:
    for p in psutil.Process(engine_pid).children():
        if f"worker {index}" in " ".join(p.cmdline()):
            return p.pid
    raise RuntimeError(f"no worker {index} under pid {engine_pid}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.restart", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10_000, help="requests/s, open loop (default 10,000)")
    ap.add_argument("--kill-after", type=float,
                    help="seconds of load before the SIGKILL (default: 5 s before the second "
                         "snapshot, 2 x snapshot.interval_s - 5)")
    ap.add_argument("--after", type=float, default=5.0, help="seconds of load after the kill (default 5)")
    ap.add_argument("--bound", type=float, default=1.0, help="restart bound in seconds (default 1)")
    ap.add_argument("--config", help="engine config (default: the bundled one)")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    schema = cfg.schema
    if a.kill_after is None:
        a.kill_after = max(1.0, 2 * cfg.durability.snapshot_interval_s - 5)
    eng = EngineProcess(config=a.config, workers=None, own_session=False).start()
    try:
        timer = threading.Timer(a.kill_after, lambda: os.kill(_worker_pid(eng.pid), signal.SIGKILL))
        timer.start()
        r = run(eng.endpoint, schema, a.rate, a.kill_after + a.after, client_id=11)
        timer.join()
        out_s = 0.0
        for _ in range(100):                       # the gauge is set by the successor's first loop
            st = read_stats(eng.metrics_bind) or {}
            out_s = sum(x["value"] for x in st.get("risk_worker_restart_seconds", []))
            if out_s:
                break
            time.sleep(0.1)
    finally:
        eng.close()
    log = [ln for ln in eng.output().splitlines()
           if re.search(r"worker 0 .*(exited|serving again)|worker crash", ln)]
    print(f"open loop at {a.rate:,.0f} req/s for {a.kill_after + a.after:g} s; worker 0 SIGKILLed "
          f"{a.kill_after:g} s in; sent {r['sent']}, never answered {r['unanswered']}")
    for k, v in sorted(r["lat_us"].items()):
        p = np.percentile(v, [50, 99, 100]) if len(v) else [0, 0, 0]
        print(f"  {k:<18} {len(v):>8}  p50 {p[0] / 1e3:8.2f} ms  p99 {p[1] / 1e3:8.2f} ms  max {p[2] / 1e3:8.2f} ms")
    print("supervisor:")
    for ln in log:
        print(f"  {ln}")
    ok = r["unanswered"] == 0 and 0 < out_s <= a.bound
    print(f"restart: worker out {out_s * 1e3:.0f} ms from its death being noticed "
          f"(risk_worker_restart_seconds; bound {a.bound:g} s): {'PASS' if ok else 'FAIL'}")
    print(f"note: the sender used {r['cpu_share']:.0%} of a CPU, on the same cores as the engine")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
