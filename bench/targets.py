"""``python -m bench.targets``: issue 22's targets, measured in one run by one load generator.

Three targets, each driven by the C load generator (bench/loadgen.c; the Python one when gcc
is missing, and the output says which ran) in alternating rounds, A B C then C B A ..., so
drift and the advantage of a slot fall on every side:

- ``pyzmq_echo``: bench.echo, a raw pyzmq ROUTER echo;
- ``compiled_echo``: bench.echo's compiled loop (``EchoServer(..., compiled=True)``), reported
  "not available" when this checkout's bench.echo has no such mode;
- ``engine``: ``risk-engine serve`` (bench.engine_proc.EngineProcess).

Scenarios, clients x events per request: ``32x64`` on bench/batched_4f.yaml (the issue's
"default 100-rule ruleset with 4 features": the 102 stateless example rules and the four
features of bench.features, issue 6's batched configuration; engine/default.yaml has 116
rules and six features), ``100x1`` and ``1x1`` on the bundled engine/default.yaml, what
``risk-engine serve`` runs, with its default spin settings.

The table has one line per target of the issue: the measured value (the median over rounds of
the per-round engine/baseline ratio, or of the absolute figure) with its range, the target,
and whether the median meets it. Errors (non-OK replies, decisions answered with a default)
are counted for every target and printed. Exit code: 0 every target met, 1 one missed or
could not be measured, 2 the run could not be made.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BATCHED_CONFIG = "bench/batched_4f.yaml"
TARGETS = ("pyzmq_echo", "compiled_echo", "engine")


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    batch: int
    batched_config: bool         # bench/batched_4f.yaml, else the engine's default config


SCENARIOS = (Scenario("32x64", 32, 64, True), Scenario("100x1", 100, 1, False),
             Scenario("1x1", 1, 1, False))


@dataclass(frozen=True)
class Row:
    """One target line of issue 22: the engine's ``metric`` in ``scenario``, divided round by
    round by ``baseline``'s (None: the absolute figure), compared with ``op`` ``target``."""
    scenario: str
    label: str
    metric: str                  # a key of the load generator's document; "errors": all kinds
    baseline: str | None
    op: str                      # ">=" or "<="
    target: float


ROWS = (Row("32x64", "events/s vs compiled echo", "events_per_s", "compiled_echo", ">=", 0.5),
        Row("32x64", "events/s", "events_per_s", None, ">=", 1_000_000),
        Row("100x1", "requests/s vs pyzmq echo", "requests_per_s", "pyzmq_echo", ">=", 1.0),
        Row("100x1", "p99 vs pyzmq echo", "p99_us", "pyzmq_echo", "<=", 1.2),
        Row("100x1", "errors", "errors", None, "<=", 0),
        Row("1x1", "p50 vs pyzmq echo", "p50_us", "pyzmq_echo", "<=", 1.0))


def errors_of(run: dict) -> int:
    """Request-level errors (error replies, BAD_REPLY, NO_REPLY) + decisions with an error."""
    return run["error_count"] + run["decision_error_count"]


def evaluate(row: Row, runs: dict, unavailable: dict) -> dict:
    """``runs[scenario][target]``: the per-round documents (a round that did not run: None);
    ``unavailable[target]`` or ``unavailable[(scenario, target)]``: why a side is missing."""
    out = {"scenario": row.scenario, "row": row.label, "op": row.op, "target": row.target,
           "baseline": row.baseline, "values": [], "measured": None, "met": None, "why": ""}
    for side in ("engine", row.baseline):
        why = side and (unavailable.get(side) or unavailable.get((row.scenario, side)))
        if why:
            out["why"] = f"{side} not available: {why}"
            return out
    eng = runs.get(row.scenario, {}).get("engine", [])
    base = runs.get(row.scenario, {}).get(row.baseline, []) if row.baseline else [None] * len(eng)
    for e, b in zip(eng, base):
        if e is None or (row.baseline and b is None):
            continue
        if row.metric == "errors":
            out["values"].append(errors_of(e))
        elif row.baseline is None:
            out["values"].append(e[row.metric])
        elif b[row.metric] > 0:
            out["values"].append(e[row.metric] / b[row.metric])
    if not out["values"]:
        out["why"] = "no round measured both sides"
        return out
    v = out["values"]
    # errors: any error in any round counts, so the total; the rest: the median round
    out["measured"] = sum(v) if row.metric == "errors" else statistics.median(v)
    m = out["measured"]
    out["met"] = m >= row.target if row.op == ">=" else m <= row.target
    return out


def _num(x: float, ratio: bool) -> str:
    if ratio:
        return f"{x:.2f}x"
    return f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.3g}"


def table(evaluated: list[dict]) -> str:
    lines = [f"{'target line':36} {'measured':>12} {'range of rounds':>22} {'target':>14}  met"]
    for r in evaluated:
        ratio = r["baseline"] is not None
        name = f"{r['scenario']:6} {r['row']}"
        goal = f"{r['op']} {_num(r['target'], ratio)}"
        if r["measured"] is None:
            lines.append(f"{name:36} {'-':>12} {'-':>22} {goal:>14}  n/a ({r['why']})")
            continue
        v = r["values"]
        rng = f"{_num(min(v), ratio)}-{_num(max(v), ratio)} ({len(v)})"
        lines.append(f"{name:36} {_num(r['measured'], ratio):>12} {rng:>22} {goal:>14}  "
                     f"{'yes' if r['met'] else 'no'}")
    return "\n".join(lines)


def raw_table(runs: dict, unavailable: dict) -> str:
    """Per scenario and target: medians over rounds, and every error by name (summed)."""
    lines = [f"{'scenario':8} {'target':14} {'gen':6} {'rounds':>6} {'requests/s':>11} {'events/s':>11} "
             f"{'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'gen us/req':>10} {'sent':>9} {'errors':>7}  error kinds"]
    for s, by_target in runs.items():
        for t in TARGETS:
            why = unavailable.get(t) or unavailable.get((s, t))
            done = [r for r in by_target.get(t, []) if r is not None]
            if why or not done:
                lines.append(f"{s:8} {t:14} not available: {why or 'no round ran'}")
                continue
            med = {k: statistics.median(r[k] for r in done)
                   for k in ("requests_per_s", "events_per_s", "p50_us", "p99_us", "p999_us",
                             "cpu_us_per_request")}
            kinds: dict[str, int] = {}
            for r in done:       # a request answered with an error vs a decision with one
                for k, n in [*r["errors"].items(),
                             *((f"decision {k}", n) for k, n in r["decision_errors"].items())]:
                    kinds[k] = kinds.get(k, 0) + n
            lines.append(f"{s:8} {t:14} {done[0]['generator']:6} {len(done):>6} "
                         f"{med['requests_per_s']:>11,.0f} {med['events_per_s']:>11,.0f} "
                         f"{med['p50_us']:>9.1f} {med['p99_us']:>9.1f} {med['p999_us']:>9.1f} "
                         f"{med['cpu_us_per_request']:>10.1f} "
                         f"{sum(r['sent'] for r in done):>9} {sum(errors_of(r) for r in done):>7}  "
                         + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-"))
    return "\n".join(lines)


def server_threads(pids: tuple) -> dict[str, float]:
    """CPU seconds of every thread of the servers' process trees (bench.phase.tree_threads)."""
    from bench.phase import tree_threads     # as in run(): --help must not load numpy and zmq
    return tree_threads([psutil.Process(p) for p in pids])


def per_request(before: dict, after: dict, run: dict) -> dict[str, float]:
    """Each server thread's CPU over the run (warm-up and drain included) per request sent,
    in microseconds, as the generator's own ``cpu_us_per_request`` counts it."""
    n = run.get("requests_total", run["sent"])      # the Python generator's: sent
    return {k: (v - before.get(k, 0.0)) / n * 1e6 for k, v in after.items()} if n else {}


def cpu_table(runs: dict) -> str:
    """Per scenario and target: each server thread's CPU per request, median of rounds, the
    busiest first (threads under 0.05 us left out), and the sum of all."""
    lines = ["server CPU per request, us (median of rounds; warm-up and drain included):"]
    for s, by_target in runs.items():
        for t, done in by_target.items():
            docs = [r["server_threads_us"] for r in done if r is not None and "server_threads_us" in r]
            if not docs:
                continue
            keys = {k for d in docs for k in d}
            med = {k: statistics.median(d.get(k, 0.0) for d in docs) for k in keys}
            total = statistics.median(sum(d.values()) for d in docs)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(med.items(), key=lambda kv: -kv[1])
                              if v >= 0.05)
            lines.append(f"{s:8} {t:14} total {total:6.1f}: {parts}")
    return "\n".join(lines)


def round_order(targets: list[str], k: int) -> list[str]:
    """A B C in even rounds, C B A in odd ones."""
    return list(targets) if k % 2 == 0 else list(reversed(targets))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, help="rounds per scenario, alternating the order (default 3; --quick 2)")
    p.add_argument("--duration", type=float, metavar="S", help="measured seconds per run (default 10; --quick 1)")
    p.add_argument("--warmup", type=float, metavar="S", help="unrecorded seconds before each run (default 1; --quick 0.3)")
    p.add_argument("--quick", action="store_true", help="a short look: 2 rounds of 1 s")
    p.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                   help="comma-separated subset of 32x64,100x1,1x1 (default all)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated subset of pyzmq_echo,compiled_echo,engine (default all)")
    p.add_argument("--generator", choices=("auto", "c", "python"), default="auto",
                   help="load generator: auto = C when gcc is present, else Python (default auto)")
    p.add_argument("--config", help="engine config for 100x1 and 1x1 (default: engine/default.yaml)")
    p.add_argument("--batched-config", default=str(REPO / BATCHED_CONFIG),
                   help=f"engine config for 32x64 (default {BATCHED_CONFIG})")
    p.add_argument("--io-threads", type=int, default=1,
                   help="libzmq I/O threads of the C load generator (default 1)")
    p.add_argument("--processes", type=int, default=2,
                   help="C load generator processes sharing the clients (default 2, as bench.latency's "
                        "Python ones; one client runs in one)")
    p.add_argument("--timeout-ms", type=int, default=5000, help="client timeout per request (default 5000)")
    p.add_argument("--start-timeout", type=float, default=300.0, metavar="S", help="engine start-up limit (default 300)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write every run and the table as JSON")


def settings(a) -> argparse.Namespace:
    """``a`` with --quick and the defaults applied and every choice checked (SystemExit)."""
    q = a.quick
    a.rounds = a.rounds if a.rounds is not None else (2 if q else 3)
    a.duration = a.duration if a.duration is not None else (1.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.3 if q else 1.0)
    if (a.rounds < 1 or a.duration <= 0 or a.warmup < 0 or a.timeout_ms < 1 or a.io_threads < 1
            or a.processes < 1):
        raise SystemExit(f"targets: rounds={a.rounds} duration={a.duration} warmup={a.warmup} "
                         f"timeout_ms={a.timeout_ms} io_threads={a.io_threads} processes={a.processes}: "
                         f"need rounds >= 1, duration > 0, warmup >= 0, the rest >= 1")
    names = {s.name: s for s in SCENARIOS}
    a.scenario_list = [names[n] if n in names else _bad("scenarios", n, names)
                       for n in a.scenarios.split(",")]
    a.target_list = [t if t in TARGETS else _bad("targets", t, TARGETS) for t in a.targets.split(",")]
    return a


def _bad(flag: str, value: str, allowed) -> None:
    raise SystemExit(f"targets: --{flag} {value!r} (allowed: {', '.join(allowed)})")


def run(a) -> int:
    # imported when a run starts: --help must not load numpy, zmq and the engine
    from bench import cload
    from bench.echo import EchoServer
    from bench.engine_proc import EngineProcess, free_port
    from bench.loadgen import run_client_id_base

    a = settings(a)
    notes, unavailable, rc = [], {}, 0
    generator, exe = a.generator, None
    if generator in ("auto", "c"):
        try:
            exe = cload.build()
            generator = "c"
        except cload.GccMissing as e:
            if generator == "c":
                raise SystemExit(f"targets: {e}")
            print(f"targets: {e}; falling back to the Python load generator (bench/loadgen.py)",
                  file=sys.stderr)
            generator = "python"
    print(f"targets: load generator: {generator}"
          + (f" ({exe}, {a.processes} process(es))" if exe else " (bench/loadgen.py, 2 processes)"),
          flush=True)
    runs: dict = {s.name: {t: [] for t in a.target_list} for s in a.scenario_list}
    for t in TARGETS:
        if t not in a.target_list:
            unavailable[t] = "not selected (--targets)"
    servers, engine, engine_config = {}, None, object()
    work = Path(tempfile.mkdtemp(prefix="bench-targets-"))     # 0700: payload files
    try:
        if "pyzmq_echo" in a.target_list:
            servers["pyzmq_echo"] = EchoServer(f"tcp://127.0.0.1:{free_port()}")
        if "compiled_echo" in a.target_list:
            if "compiled" not in inspect.signature(EchoServer).parameters:
                unavailable["compiled_echo"] = "this checkout's bench.echo has no --compiled mode"
            else:
                try:
                    servers["compiled_echo"] = EchoServer(f"tcp://127.0.0.1:{free_port()}",
                                                          start_timeout_s=a.start_timeout,
                                                          compiled=True)
                except RuntimeError as e:
                    unavailable["compiled_echo"] = str(e).splitlines()[0]
        for sc in a.scenario_list:
            config = a.batched_config if sc.batched_config else a.config
            payloads = work / f"{sc.name}.req"
            cload.write_payloads(payloads, config, sc.batch, seed=a.seed)
            if "engine" in a.target_list and config != engine_config:
                if engine is not None:
                    rc = max(rc, _close_engine(engine, notes))
                    engine = None
                engine_config = config
                print(f"targets: starting risk-engine serve --config {config or 'engine/default.yaml'} "
                      f"(a first start compiles the kernels) ...", file=sys.stderr, flush=True)
                try:
                    engine = EngineProcess(config=config, workers=None, own_session=False,
                                           ready_timeout_s=a.start_timeout).start()
                    notes.append(f"{sc.name}: {engine.ready_line}")
                except RuntimeError as e:
                    notes.append(f"engine did not start: config={config} {str(e).splitlines()[0]}")
                    rc = 2
            if "engine" in a.target_list and engine is None:
                unavailable[(sc.name, "engine")] = f"did not start (config {config})"
            live = [t for t in a.target_list
                    if not (unavailable.get(t) or unavailable.get((sc.name, t)))]
            addr = {**{t: s.bind for t, s in servers.items()}, "engine": engine and engine.endpoint}
            for k in range(a.rounds):
                for t in round_order(live, k):
                    load = cload.Load(addr[t], "engine" if t == "engine" else "echo", sc.clients,
                                      sc.batch, a.duration, a.warmup, config, a.seed, a.timeout_ms,
                                      io_threads=a.io_threads, processes=a.processes)
                    ids = run_client_id_base()      # fresh ids: never the idempotency cache
                    pids = (engine.pid,) if t == "engine" else (servers[t].pid,)
                    cpu0 = server_threads(pids)
                    r = (cload.run_c(exe, load, payloads, ids) if exe
                         else cload.run_python(load, ids))
                    r["server_threads_us"] = per_request(cpu0, server_threads(pids), r)
                    r.pop("hist", None)            # its percentiles are in the document
                    runs[sc.name][t].append(r)
                    print(f"round {k + 1}/{a.rounds} {sc.name:6} {t:14} {r['requests_per_s']:>11,.0f} req/s "
                          f"{r['events_per_s']:>12,.0f} events/s  p50 {r['p50_us']:8.1f} us  "
                          f"p99 {r['p99_us']:8.1f} us  errors {errors_of(r)}", file=sys.stderr, flush=True)
    except RuntimeError as e:
        print(f"targets: run failed: {e}", file=sys.stderr)
        notes.append(f"run failed: {str(e).splitlines()[0]}")
        rc = 2
    finally:
        for t, s in servers.items():
            notes.append(f"{t} process handled {s.stop()} messages")
        if engine is not None:
            rc = max(rc, _close_engine(engine, notes))
        shutil.rmtree(work, ignore_errors=True)
    evaluated = [evaluate(row, runs, unavailable) for row in ROWS
                 if any(s.name == row.scenario for s in a.scenario_list)]
    print(table(evaluated))
    print()
    print(raw_table(runs, unavailable))
    print()
    print(cpu_table(runs))
    for n in notes:
        print(f"note: {n}")
    if a.json:
        doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": " ".join(["python -m bench.targets"] + sys.argv[1:]),
               "cpus": len(os.sched_getaffinity(0)), "loadavg_1m": round(os.getloadavg()[0], 2),
               "generator": generator, "rounds": a.rounds, "duration_s": a.duration,
               "warmup_s": a.warmup,
               "configs": {s.name: (a.batched_config if s.batched_config else a.config) or "engine/default.yaml"
                           for s in a.scenario_list},
               "unavailable": {(k if isinstance(k, str) else "/".join(k)): v for k, v in unavailable.items()},
               "rows": evaluated, "runs": runs, "notes": notes}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"json: wrote {os.path.abspath(a.json)}")
    if rc == 0 and not all(r["met"] for r in evaluated):
        rc = 1
    return rc


def _close_engine(engine, notes: list) -> int:
    erc = engine.close()
    notes.append(f"engine stopped with SIGTERM: exit code {erc}")
    if erc != 0:
        print(f"targets: engine exit code {erc} (expected 0)\n{engine.output()[-2000:]}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.split(": ", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="docs/BENCH.md, 'Issue 22's targets', says what each line means.")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
