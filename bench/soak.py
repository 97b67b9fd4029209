"""``python -m bench.soak`` (``make soak``, issue 7): a long open-loop run at half the
sustainable rate against an engine started here.

1. Start ``risk-engine serve`` (bench.engine_proc) and probe the sustainable rate with a
   short closed-loop run (``--probe`` seconds, ``--clients`` clients), unless ``--rate``.
2. Run ``--settle`` seconds (60) at the soak rate, so that the engine's idempotency window
   (``ingress.dedup_window_s``, 60 s by default) and its caches are full, then record RSS
   of every engine process and the bytes of the instance's /dev/shm segments.
3. Open loop at ``--fraction`` (0.5) of that rate for ``--duration`` (600 s), latency from the
   intended send time, one histogram per ``--interval`` (60 s).
4. Record RSS and shared memory again; print the P99 per interval, errors, and the verdicts:
   RSS growth <= 1 % per process, judged on RssAnon (RSS also counts touched pages of shared
   mappings: a worker's journal segment, a sawtooth that rotation resets, and the feature
   tables, checked as shared memory), shared memory unchanged, 0 errors. Exit 0 when all hold.
5. If any decision missed its deadline or a worker stalled: the timeout forensics
   (bench.forensics), each burst of TIMEOUT decisions next to the worker stalls, snapshots
   and CPU steal logged around it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from bench.engine_proc import EngineProcess, engine_memory
from bench.forensics import LogCollector, explain, print_report
from bench.loadgen import LoadSpec, run_client_id_base
from bench.phase import run_phase

RSS_GROWTH_MAX = 0.01


def shm_bytes(instance: str, shm_dir: str = "/dev/shm") -> int:
    """Apparent bytes of the /dev/shm entries (segments and semaphores) of ``instance``."""
    total = 0
    for name in os.listdir(shm_dir):
        if f"risk-engine.{instance}." in name:
            try:
                total += os.stat(os.path.join(shm_dir, name)).st_size
            except FileNotFoundError:
                pass
    return total


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=600.0, metavar="S", help="soak seconds (default 600)")
    p.add_argument("--interval", type=float, default=60.0, metavar="S", help="P99 per interval (default 60)")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s (default: --fraction of the probed rate)")
    p.add_argument("--fraction", type=float, default=0.5, help="of the sustainable rate (default 0.5)")
    p.add_argument("--probe", type=float, default=10.0, metavar="S", help="closed-loop probe seconds")
    p.add_argument("--settle", type=float, default=60.0, metavar="S",
                   help="open loop at the soak rate before RSS start is read (default 60: the "
                        "engine's idempotency window, ingress.dedup_window_s, fills meanwhile)")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--config")
    p.add_argument("--workers", type=int)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--start-timeout", type=float, default=300.0)


def run(a) -> int:
    progress = sys.stderr.isatty()
    eng = EngineProcess(config=a.config, workers=a.workers or None, ready_timeout_s=a.start_timeout,
                        own_session=False).start()
    doc: dict = {"command": " ".join(["python -m bench.soak"] + sys.argv[1:]), "engine": eng.ready_line}
    try:
        spec = LoadSpec(eng.endpoint, clients=a.clients, batch=a.batch, config=a.config, warmup_s=1.0,
                        client_id_base=run_client_id_base())
        rate = a.rate
        if not rate:
            spec.duration_s = a.probe
            probe = run_phase("probe", spec, a.processes, progress=progress)
            doc["probed_rate"] = probe.answered / a.probe
            rate = a.fraction * doc["probed_rate"]
        doc["rate"] = rate
        if a.settle > 0:               # fill the idempotency window and caches first
            spec.duration_s, spec.rate = a.settle, rate
            spec.client_id_base = run_client_id_base()
            run_phase("settle", spec, a.processes, progress=progress)
        mem = engine_memory(eng.pid)
        doc["rss_start"] = {k: v[0] for k, v in mem.items()}
        doc["rss_anon_start"] = {k: v[1] for k, v in mem.items()}
        doc["shm_bytes_start"] = shm_bytes(eng.instance)
        spec.duration_s, spec.rate, spec.interval_s = a.duration, rate, a.interval
        spec.client_id_base = run_client_id_base()          # never replay the probe's ids
        logs = LogCollector(eng.stats).start()
        try:
            ph = run_phase("soak", spec, a.processes, progress=progress)
        finally:
            logs.stop()
        mem = engine_memory(eng.pid)
        doc["rss_end"] = {k: v[0] for k, v in mem.items()}
        doc["rss_anon_end"] = {k: v[1] for k, v in mem.items()}
        doc["shm_bytes_end"] = shm_bytes(eng.instance)
        final = eng.stats() or {}
    finally:
        doc["engine_exit"] = eng.close()
    doc.update(sent=ph.sent, ok=ph.ok, errors=ph.errors, decision_errors=ph.decision_errors,
               unsent=ph.unsent,
               p99_ms_per_interval=[h.get_value_at_percentile(99) / 1e6 if h.get_total_count() else None
                                    for h in ph.intervals],
               p99_ms=ph.hist.get_value_at_percentile(99) / 1e6)
    growth = {k: (doc["rss_anon_end"].get(k, 0) - v) / v for k, v in doc["rss_anon_start"].items() if v}
    doc["rss_growth"] = growth
    checks = {"rss_growth_le_1pct": all(g <= RSS_GROWTH_MAX for g in growth.values()),
              "shm_unchanged": doc["shm_bytes_start"] == doc["shm_bytes_end"],
              "no_errors": ph.error_count == 0 and not ph.decision_errors,
              "rate_reached": ph.unsent <= max(1, 0.01 * (ph.sent + ph.unsent)),
              "engine_exit_0": doc["engine_exit"] == 0}
    doc["checks"] = checks
    print(f"soak: {a.duration:g} s at {rate:.0f} req/s"
          + (f" ({a.fraction:g} x probed {doc['probed_rate']:.0f}/s)" if "probed_rate" in doc else ""))
    print("  memory per process, MiB: RSS start -> end; RssAnon (private: what a leak grows) "
          "start -> end, growth (the check)")
    for k, v in doc["rss_start"].items():
        print(f"  {k:<28} {v / 2**20:7.1f} -> {doc['rss_end'].get(k, 0) / 2**20:7.1f};"
              f" {doc['rss_anon_start'][k] / 2**20:7.1f} -> {doc['rss_anon_end'].get(k, 0) / 2**20:7.1f}"
              f"  {growth.get(k, 0):+.2%}")
    print(f"  shared memory bytes: start {doc['shm_bytes_start']}  end {doc['shm_bytes_end']}")
    print(f"  sent {ph.sent}  ok {ph.ok}  errors {ph.errors or 'none'}  decision errors "
          f"{ph.decision_errors or 'none'}  unsent {ph.unsent}")
    print("  P99 ms per interval: " + " ".join("-" if v is None else f"{v:.2f}"
                                              for v in doc["p99_ms_per_interval"]))
    timeouts = logs.entries("timeouts")
    stalls = logs.entries("stalls")
    doc["forensics"] = explain(timeouts, stalls, logs.entries("snapshots"), logs.cpu)
    doc["log"] = {"timeouts": timeouts, "stalls": stalls, "snapshots": logs.entries("snapshots"),
                  "cpu_steal_iowait_pct": logs.cpu}
    doc["worker_stalls"] = {f"{r['worker']} {r['phase']}": r["value"]
                            for r in final.get("risk_worker_stalls", []) if r["value"]}
    doc["overloaded"] = {r["reason"]: r["value"] for r in final.get("risk_overloaded", []) if r["value"]}
    if doc["overloaded"]:
        print(f"  OVERLOADED by reason (risk_overloaded_total, whole run): {doc['overloaded']}")
    if ph.decision_errors or stalls:
        print_report(doc["forensics"], len(stalls), (ph.decision_errors or {}).get("TIMEOUT", 0))
        print(f"  worker stalls by phase: {doc['worker_stalls'] or 'none'}")
    for k, v in checks.items():
        print(f"  {k}: {'PASS' if v else 'FAIL'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
