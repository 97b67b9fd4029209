"""``python -m bench.latency``: engine round-trip latency next to a raw pyzmq echo baseline.

One run = up to two phases with the same clients, payload and concurrency: the echo server
(bench.echo, its own process) and then the engine (started here as ``risk-engine serve`` on
free ports, or the running one named by ``--target``). See docs/BENCH.md for how to read
the table. Exit code: 0 when the engine phase passes the acceptance bar (P99 <= 8 ms and no
errors) or only the echo ran, 1 when it fails the bar, 2 when the run could not be made.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import replace


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help="concurrent clients, one request in flight each (default 100)")
    p.add_argument("--duration", type=float, default=30.0, metavar="S", help="measured seconds per phase (default 30)")
    p.add_argument("--warmup", type=float, default=2.0, metavar="S", help="unrecorded seconds before measuring (default 2)")
    p.add_argument("--rate", type=float, default=0.0, metavar="R",
                   help="open loop: total requests/s, latency from intended send time (default: closed loop)")
    p.add_argument("--batch", type=int, default=1, metavar="N", help="events per request (default 1)")
    p.add_argument("--transport", choices=("binary", "json"), default="binary")
    p.add_argument("--processes", type=int, default=2, metavar="P", help="load processes (default 2)")
    p.add_argument("--target", metavar="ADDR", help="a running engine to measure instead of starting one")
    p.add_argument("--target-metrics", metavar="HOST:PORT", help="metrics endpoint of --target (for GC pauses)")
    p.add_argument("--config", help="engine config (default: the bundled engine/default.yaml)")
    p.add_argument("--workers", type=int, help="engine worker processes (default: the config's)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="HDR percentile plot (needs matplotlib)")
    p.add_argument("--rounds", type=int, default=1, metavar="K",
                   help="alternate echo and engine K times, duration/K each, and merge each side "
                        "(both see the same machine state; default 1)")
    p.add_argument("--echo-only", action="store_true", help="only the echo baseline")
    p.add_argument("--no-echo", action="store_true", help="only the engine")
    p.add_argument("--timeout-ms", type=int, default=5000, help="client timeout per request (default 5000)")
    p.add_argument("--start-timeout", type=float, default=300.0, metavar="S", help="engine start-up limit")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keys", choices=("zipf", "uniform"), default="zipf",
                   help="how account, card and device ids are drawn from 1M: zipf (default; a few "
                        "hot keys, as real traffic) or uniform (every feature lookup a cache miss)")
    p.add_argument("--zipf-s", type=float, default=0.99, metavar="S",     # bench.events.ZIPF_S (no numpy for --help)
                   help="Zipf exponent for --keys zipf (default 0.99, YCSB's: the top 1,000 of 1M "
                        "ids take half the events)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--alloc", action="store_true", help="allocation check instead of latency (bench.alloc)")
    p.add_argument("--overload", action="store_true",
                   help="twice the sustainable rate instead of latency (bench.overload): admitted "
                        "p50/p99, OVERLOADED replies, memory; --duration S (probe: min(3, S) s), --config")
    p.add_argument("--alloc-events", type=int, default=100_000, help="events for --alloc (default 100000)")


def check_args(a) -> None:
    for name, v, lo in (("clients", a.clients, 1), ("batch", a.batch, 1), ("processes", a.processes, 1),
                        ("rounds", a.rounds, 1)):
        if v < lo:
            raise SystemExit(f"bench: --{name}={v} must be >= {lo}")
    if a.duration <= 0 or a.warmup < 0 or a.rate < 0:
        raise SystemExit(f"bench: duration={a.duration} warmup={a.warmup} rate={a.rate}: need "
                         f"duration > 0, warmup >= 0, rate >= 0")
    if not (a.zipf_s > 0 and math.isfinite(a.zipf_s)):
        raise SystemExit(f"bench: --zipf-s={a.zipf_s} must be a number > 0")
    if a.echo_only and a.no_echo:
        raise SystemExit("bench: --echo-only and --no-echo exclude each other")


def build_document(a, summaries: dict, gc: dict | None, notes: list[str],
                   inside: dict | None = None, stalls: dict | None = None) -> dict:
    from bench import report    # lazy: numpy, psutil, yaml (run says why)
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join(["python -m bench.latency"] + sys.argv[1:]),
           "cpus": len(os.sched_getaffinity(0)),
           "loadavg_1m": round(os.getloadavg()[0], 2),    # other work on the machine
           "settings": {"clients": a.clients, "processes": min(a.processes, a.clients),
                        "duration_s": a.duration, "warmup_s": a.warmup, "rate": a.rate,
                        "batch": a.batch, "transport": a.transport, "keys": a.keys, "zipf_s": a.zipf_s,
                        "target": a.target or ("-" if a.echo_only else "own engine"), "config": a.config or "default"},
           "phases": summaries, "engine_gc": gc, "engine_inside": inside,
           "engine_stalls": stalls, "notes": notes}
    if "engine" in summaries and "echo" in summaries:
        doc["ratio"] = report.ratios(summaries["engine"], summaries["echo"])
    if "engine" in summaries:
        doc["acceptance"] = report.acceptance(summaries["engine"])
    return doc


def run(a) -> int:
    # the imports below wait until a run: `risk-engine` builds its parser from add_arguments
    # above (bench/cmd_bench.py), and --help must not load numpy, zmq and the engine
    check_args(a)
    if a.alloc:
        from bench import alloc             # lazy, as every import in run
        return alloc.run(a)
    if a.overload:
        from bench import overload          # lazy, as every import in run
        return overload.main(["--duration", str(a.duration), "--probe", str(min(3.0, a.duration))]
                             + (["--config", a.config] if a.config else []))
    from bench import report                # lazy, as every import in run
    from bench.echo import EchoServer
    from bench.engine_proc import (EngineProcess, engine_latency, free_port, gc_delta, stall_delta,
                                   listening_pids, read_stats)
    from bench.loadgen import LoadSpec, run_client_id_base
    from bench.phase import combine, run_phase

    progress = sys.stderr.isatty() and not a.no_progress
    spec = LoadSpec(target="", clients=a.clients, duration_s=a.duration, warmup_s=a.warmup,
                    rate=a.rate, batch=a.batch, transport=a.transport, config=a.config,
                    seed=a.seed, keys=a.keys, zipf_s=a.zipf_s, timeout_ms=a.timeout_ms,
                    client_id_base=run_client_id_base())
    cpus = len(os.sched_getaffinity(0))
    phases, summaries, notes, gc, inside, logs, stalls = {}, {}, [], None, None, None, None
    rc = 0
    echo = engine = None
    parts: dict[str, list] = {"echo": [], "engine": []}
    # fresh client ids every round: a repeated (client id, request id) is answered from the
    # engine's idempotency window, and the round would measure that cache
    rounds = [replace(spec, duration_s=a.duration / a.rounds, client_id_base=run_client_id_base())
              for _ in range(a.rounds)]
    try:
        if not a.no_echo:
            echo = EchoServer(f"tcp://127.0.0.1:{free_port()}")
        if not a.echo_only:
            try:
                if a.target:
                    target, metrics, pids = a.target, a.target_metrics, listening_pids(a.target)
                else:
                    print("bench: starting risk-engine serve (the first start compiles the kernel) ...",
                          file=sys.stderr, flush=True)
                    engine = EngineProcess(config=a.config, workers=a.workers or None,
                                           ready_timeout_s=a.start_timeout, own_session=False).start()
                    target, metrics, pids = engine.endpoint, engine.metrics_bind, (engine.pid,)
                    notes.append(f"engine: {engine.ready_line}")
                before = read_stats(metrics)
            except RuntimeError as e:
                print(f"bench: engine failed to start: {e}", file=sys.stderr)
                notes.append(f"engine phase failed: {str(e).splitlines()[0]}")
                rc = 2
        for k, r in enumerate(rounds):
            tag = f" {k + 1}/{a.rounds}" if a.rounds > 1 else ""
            if echo is not None:
                parts["echo"].append(run_phase("echo" + tag, replace(r, target=echo.bind, kind="echo"),
                                               a.processes, (echo.pid,), progress))
            if not a.echo_only and rc == 0:
                try:
                    parts["engine"].append(run_phase("engine" + tag, replace(r, target=target, kind="engine"),
                                                     a.processes, pids, progress))
                except RuntimeError as e:
                    print(f"bench: engine phase failed: {e}", file=sys.stderr)
                    notes.append(f"engine phase failed: {str(e).splitlines()[0]}")
                    rc = 2
        if parts["engine"] and rc == 0:
            after = read_stats(metrics)
            gc = gc_delta(before, after)
            stalls = stall_delta(before, after)
            inside = engine_latency(before, after, a.transport)
            logs = (after or {}).get("log")
    finally:
        if echo is not None:
            notes.append(f"echo process handled {echo.stop()} messages")
        if engine is not None:
            erc = engine.close()
            notes.append(f"engine stopped with SIGTERM: exit code {erc}")
            if erc != 0:
                print(f"bench: engine exit code {erc} after SIGTERM (expected 0)\n"
                      f"{engine.output()[-2000:]}", file=sys.stderr)
                rc = rc or 2
    if a.rounds > 1:
        notes.append(f"{a.rounds} rounds, echo and engine alternating, {a.duration / a.rounds:g} s each")
    for side in ("echo", "engine"):
        if parts[side] and not (side == "engine" and rc):
            phases[side] = combine(parts[side])
            summaries[side] = report.summarise(phases[side], cpus)
    doc = build_document(a, summaries, gc, notes, inside, stalls)
    if summaries:
        print(report.table(doc))
    timeouts = summaries.get("engine", {}).get("decision_errors", {}).get("TIMEOUT", 0)
    if timeouts and logs:                  # what the engine logged around them (bench.forensics)
        from bench.forensics import explain, print_report     # lazy, as every import in run
        doc["engine_log"] = logs
        print_report(explain(logs["timeouts"], logs["stalls"], logs["snapshots"], []),
                     len(logs["stalls"]), timeouts)
    for n in notes:
        print(f"note: {n}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"json: wrote {os.path.abspath(a.json)}")
    if a.plot:
        print(report.plot(a.plot, phases))
    if rc == 0 and "acceptance" in doc and not doc["acceptance"]["pass"]:
        rc = 1
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
