"""``python -m bench.stall``: what one worker stall costs (issue 22, part 5).

Starts an engine (bench.engine_proc), then for each ``--clients`` count runs that many
closed-loop clients (bench.loadgen, each resends as soon as its reply arrives) and, once per
``--interval`` s, stops one worker with SIGSTOP for ``--stall-ms`` and continues it
(SIGCONT): the descheduling a loaded machine inflicts, made repeatable. From just before each
stall to just before the next it counts the OVERLOADED refusals (``risk_overloaded_total``,
worker_behind among them) and the TIMEOUT answers (``risk_requests_total{result="TIMEOUT"}``):
what that stall cost. One window of the same length without a stall comes first (the
machine's own noise).

Target: refusals + TIMEOUTs per stall no more than the requests in flight when it began. A
closed-loop client always has its one request in flight (sent, not yet answered), so that is
the client count: each client may lose the request it had out, no more. The engine's own
count at that instant (``risk_requests_in_flight``, admitted and not answered) is printed
beside it; it is smaller, because the rest are in sockets or in the load generator.
Exit code 0 when every stall met the target, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import signal
import threading
import time

import psutil

from bench.engine_proc import EngineProcess
from bench.loadgen import LoadSpec, run_client_id_base
from bench.phase import run_phase


def counters(stats: dict | None) -> dict:
    """From one /stats read: refusals (every reason), worker_behind refusals, TIMEOUT
    answers, requests in flight, requests answered."""
    if not stats:
        raise RuntimeError("no /stats from the engine (metrics disabled or not answering)")

    def total(name: str, **labels) -> float:
        return sum(r["value"] for r in stats.get(name, [])
                   if r["sample"] == name + "_total" and all(r.get(k) == v for k, v in labels.items()))
    answered = total("risk_requests")
    return {"refused": total("risk_overloaded"), "behind": total("risk_overloaded", reason="worker_behind"),
            "timeouts": total("risk_requests", result="TIMEOUT"), "answered": answered,
            "inflight": sum(r["value"] for r in stats.get("risk_requests_in_flight", []))}


def worker_process(eng: EngineProcess, index: int) -> psutil.Process:
    """Worker ``index`` of ``eng`` (its process title names it: shm.runtime.procname)."""
    for p in psutil.Process(eng.pid).children(recursive=True):
        if f"worker {index}" in " ".join(p.cmdline()):
            return p
    raise RuntimeError(f"worker index={index} not found under engine pid={eng.pid}")


def stall_once(pid: int, stall_s: float) -> float:
    """SIGSTOP ``pid`` for ``stall_s``, then SIGCONT (always); returns the stall's length."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(stall_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    return time.monotonic() - t0


def windows(eng: EngineProcess, pid: int, stalls: int, stall_s: float, interval_s: float,
            until: float) -> tuple[dict, list[dict]]:
    """One window without a stall, then up to ``stalls`` windows each starting with one (all
    ending before ``until``, a time.monotonic() value): per window the counter deltas and
    the requests in flight at its start."""
    rows = []
    before = counters(eng.stats())
    for k in range(stalls + 1):
        t0 = time.monotonic()
        if t0 + interval_s > until:
            break
        stalled_s = stall_once(pid, stall_s) if k else 0.0
        time.sleep(max(0.0, t0 + interval_s - time.monotonic()))
        after = counters(eng.stats())
        rows.append({"inflight": int(before["inflight"]), "stall_ms": stalled_s * 1e3,
                     **{f: int(after[f] - before[f]) for f in ("refused", "behind", "timeouts", "answered")}})
        before = after
    if not rows:
        raise RuntimeError(f"no window of {interval_s} s fits: lengthen --duration")
    return rows[0], rows[1:]


def run_clients(eng: EngineProcess, clients: int, a) -> dict:
    """``clients`` closed-loop clients for ``a.duration`` s (after a warm-up), stalls meanwhile."""
    spec = LoadSpec(target=eng.endpoint, clients=clients, duration_s=a.duration, warmup_s=a.warmup,
                    config=str(eng.config_path), timeout_ms=5000, drain_s=2.0,
                    client_id_base=run_client_id_base())
    out: dict = {}

    def load():
        try:
            out["phase"] = run_phase(f"c={clients}", spec, 1, progress=False)
        except BaseException as e:          # reported by the caller
            out["error"] = e

    th = threading.Thread(target=load, name="bench-stall-load")
    th.start()
    try:
        start = counters(eng.stats())["answered"]     # the load runs once answers grow
        t_wait = time.monotonic() + 180
        while th.is_alive() and counters(eng.stats())["answered"] == start:
            if time.monotonic() > t_wait:
                raise RuntimeError("the load processes never got an answer in 180 s")
            time.sleep(0.05)
        time.sleep(a.warmup)
        until = time.monotonic() + a.duration - a.warmup
        pid = worker_process(eng, a.worker).pid
        out["control"], out["stalls"] = windows(eng, pid, a.stalls, a.stall_ms / 1e3, a.interval, until)
    finally:
        th.join()
    if "error" in out:
        raise out["error"]
    return out


def report(clients: int, r: dict) -> bool:
    """Print one client count's windows; True when every stall met the target."""
    ph = r["phase"]
    c = r["control"]
    print(f"\n{clients} client(s): {ph.answered} answered in {ph.spec.duration_s:g} s, "
          f"errors {dict(sorted(ph.errors.items())) or 0}, decision errors "
          f"{dict(sorted(ph.decision_errors.items())) or 0}")
    print(f"  no stall ({r['interval']:g} s): refused {c['refused']}  timeouts {c['timeouts']}  "
          f"answered {c['answered']}")
    print(f"  {'stall':>5} {'ms':>6} {'in flight':>9} {'(engine)':>8} {'refused':>8} {'behind':>7} "
          f"{'timeouts':>8} {'answered':>8}  target")
    met = 0
    for k, s in enumerate(r["stalls"], 1):
        ok = s["refused"] + s["timeouts"] <= clients
        met += ok
        print(f"  {k:>5} {s['stall_ms']:>6.1f} {clients:>9} {s['inflight']:>8} {s['refused']:>8} "
              f"{s['behind']:>7} {s['timeouts']:>8} {s['answered']:>8}  {'met' if ok else 'MISSED'}")
    n = len(r["stalls"])
    cost = sum(s["refused"] + s["timeouts"] for s in r["stalls"])
    print(f"  stalls meeting the target (refused + timeouts <= {clients} in flight at its start): "
          f"{met}/{n}; refused + timeouts per stall {cost / max(n, 1):.1f}")
    return met == n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.stall", description="\n\n".join(__doc__.split("\n\n")[1:3]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,100",
                    help="comma-separated client counts, one run each (default 1,100)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per client count")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before the first window")
    ap.add_argument("--stall-ms", type=float, default=50.0, help="length of each SIGSTOP")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between stall starts")
    ap.add_argument("--stalls", type=int, default=8, help="at most this many stalls per client count")
    ap.add_argument("--worker", type=int, default=0, help="the worker index to stall")
    ap.add_argument("--workers", type=int, default=2, help="workers.count of the engine")
    ap.add_argument("--config", help="engine config (default: the bundled one)")
    a = ap.parse_args(argv)
    counts = [int(c) for c in a.clients.split(",") if c.strip()]
    if not counts or min(counts) < 1 or a.stall_ms <= 0 or a.interval * 1e3 <= a.stall_ms \
            or a.stalls < 1 or not 0 <= a.worker < a.workers:
        ap.error(f"clients={a.clients!r} stall_ms={a.stall_ms} interval={a.interval} "
                 f"stalls={a.stalls} worker={a.worker} workers={a.workers}: need client counts "
                 f">= 1, 0 < stall < interval, stalls >= 1, 0 <= worker < workers")
    eng = EngineProcess(config=a.config, workers=a.workers, own_session=False).start()
    results = {}
    try:
        for c in counts:
            results[c] = {**run_clients(eng, c, a), "interval": a.interval}
    finally:
        eng.close()
    print(f"bench.stall: worker {a.worker} of {a.workers} stopped {a.stall_ms:g} ms every "
          f"{a.interval:g} s (SIGSTOP/SIGCONT), closed-loop clients")
    met = [report(c, r) for c, r in results.items()]
    return 0 if all(met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
