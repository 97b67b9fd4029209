"""Turn phase results into the printed table, the ``--json`` document and the ``--plot``.

Every percentile comes from the merged HdrHistogram (3 significant digits). The ratio column
is engine / echo for the same clients, payload and concurrency in the same run: above 1x for
latency (and below 1x for throughput) is what the engine costs over raw pyzmq.
"""
from __future__ import annotations

import os

from bench.engine_proc import engine_latency_text
from bench.phase import PhaseResult
from shm.control import STALL_NS

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
BAR_P99_MS = 8.0          # make bench acceptance bar (issue 6)
TARGET_P99_MS = 2.0       # target on this 2-core machine


def summarise(ph: PhaseResult, cpus: int) -> dict:
    """The numbers of one phase, as plain JSON types (latencies in ms)."""
    h = ph.hist
    n = h.get_total_count()
    dur = ph.spec.duration_s
    d = {"label": ph.label, "sent": ph.sent, "ok": ph.ok, "answered": ph.answered,
         "errors": dict(sorted(ph.errors.items())), "error_count": ph.error_count,
         "error_rate": ph.error_count / ph.sent if ph.sent else 0.0,
         "decision_errors": dict(sorted(ph.decision_errors.items())),
         "requests_per_s": ph.answered / dur, "events_per_s": ph.events_ok / dur,
         "recorded": n}
    for name, p in PERCENTILES:
        d[f"{name}_ms"] = h.get_value_at_percentile(p) / 1e6 if n else None
    d["max_ms"] = h.get_max_value() / 1e6 if n else None
    d["mean_ms"] = h.get_mean_value() / 1e6 if n else None
    d["load_cpu_s"] = round(ph.load_cpu_s, 3)
    d["load_cpu_share"] = ph.load_cpu_s / (ph.wall_s * cpus) if ph.wall_s else None
    d["server_cpu_s"] = None if ph.server_cpu_s is None else round(ph.server_cpu_s, 3)
    d["server_cpu_share"] = (ph.server_cpu_s / (ph.wall_s * cpus)
                             if ph.server_cpu_s is not None and ph.wall_s else None)
    # per request: CPU over the whole phase (warm-up included) / the requests of the whole
    # phase at the measured rate
    n = ph.answered / dur * ph.wall_s if dur else 0
    d["load_cpu_us_per_request"] = ph.load_cpu_s / n * 1e6 if n else None
    d["server_thread_us_per_request"] = {
        k: round(v / n * 1e6, 2) for k, v in sorted(ph.server_threads.items(), key=lambda kv: -kv[1])
        if n and v > 0}
    d["server_write_bytes_per_request"] = (round(ph.server_write_bytes / n, 1)
                                           if n and ph.server_write_bytes is not None else None)
    if ph.spec.rate:
        d["target_rate"] = ph.spec.rate
        d["unsent"] = ph.unsent
        d["rate_reached"] = ph.unsent <= max(1, 0.01 * (ph.sent + ph.unsent))
    if ph.intervals:
        d["p99_ms_per_interval"] = [x.get_value_at_percentile(99.0) / 1e6 if x.get_total_count()
                                    else None for x in ph.intervals]
    return d


def ratios(engine: dict, echo: dict) -> dict:
    out = {}
    for key in [f"{n}_ms" for n, _ in PERCENTILES] + ["max_ms", "requests_per_s", "events_per_s"]:
        a, b = engine.get(key), echo.get(key)
        out[key] = a / b if a is not None and b else None
    return out


def acceptance(engine: dict) -> dict:
    """The make-bench bar. Errors = request-level errors + decisions carrying an error code
    (a TIMEOUT or OVERLOADED default decision is an answer, but not an evaluation)."""
    p99 = engine.get("p99_ms")
    errors = engine["error_count"] + sum(engine["decision_errors"].values())
    ok = p99 is not None and p99 <= BAR_P99_MS and errors == 0 and engine["sent"] > 0
    return {"p99_ms": p99, "errors": errors, "bar_p99_ms": BAR_P99_MS,
            "pass": ok, "target_p99_ms": TARGET_P99_MS,
            "target_met": p99 is not None and p99 <= TARGET_P99_MS}


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _codes(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "none"


def table(doc: dict) -> str:
    """The human table for a ``--json`` document (see ``bench.latency.build_document``)."""
    s = doc["settings"]
    ph = doc["phases"]
    cols = [k for k in ("engine", "echo") if k in ph]
    mode = f"open loop at {s['rate']:.0f} req/s" if s["rate"] else "closed loop"
    lines = [f"risk-engine bench {doc['date']} (load average {doc.get('loadavg_1m', '?')}): {mode}, {s['clients']} clients over "
             f"{s['processes']} load processes, batch {s['batch']}, {s['transport']}, "
             f"{s['duration_s']:g} s (+{s['warmup_s']:g} s warm-up), target {s['target']}"]
    head = f"{'':<22}" + "".join(f"{c:>14}" for c in cols)
    if "ratio" in doc:
        head += f"{'engine/echo':>14}"
    lines.append(head)

    def row(name, key, fmt="{:.3f}", rfmt="{:.2f}x"):
        r = f"{name:<22}" + "".join(f"{_f(ph[c].get(key), fmt):>14}" for c in cols)
        if "ratio" in doc:
            r += f"{_f(doc['ratio'].get(key), rfmt):>14}"
        lines.append(r)

    row("requests/s", "requests_per_s", "{:.0f}")
    row("events/s", "events_per_s", "{:.0f}")
    for name, _ in PERCENTILES:
        row(f"{name} ms", f"{name}_ms")
    row("max ms", "max_ms")
    row("sent", "sent", "{:d}")
    row("errors", "error_count", "{:d}")
    row("error rate", "error_rate", "{:.4%}")
    for c in cols:
        lines.append(f"{c} errors by code: {_codes(ph[c]['errors'])}; "
                     f"per-decision errors: {_codes(ph[c]['decision_errors'])}")
        if "target_rate" in ph[c]:
            t = ph[c]
            achieved = t["sent"] / s["duration_s"]
            lines.append(f"{c} rate: target {t['target_rate']:.0f}/s, sent {achieved:.0f}/s"
                         + ("" if t["rate_reached"] else
                            f"  TARGET RATE NOT REACHED ({t['unsent']} requests never sent; their "
                            f"wait is not in the percentiles, the ones sent late are)"))
    gc = doc.get("engine_gc")
    if "engine" in ph:
        if gc is None:
            lines.append("GC pauses in the engine: unknown (no metrics endpoint)")
        else:
            lines.append("GC pauses in the engine: " + ("; ".join(
                f"{p}: {v['pauses']} ({v['total_ms']:.1f} ms)" for p, v in gc.items()) or "none"))
    if "engine" in ph and doc.get("engine_stalls") is not None:
        st = doc["engine_stalls"]
        lines.append(f"worker steps over {STALL_NS / 1e6:g} ms (risk_worker_stalls, by worker and stage): "
                     + (", ".join(f"{k} {v}" for k, v in st.items()) or "none"))
    e = doc.get("engine_inside")
    if "engine" in ph and e and e.get("count"):
        lines.append(f"inside the engine: {engine_latency_text(e)}; the rest of a round trip is the "
                     f"client, the network stack and the ROUTER socket's queue before the ingress reads it")
    cpu = ", ".join(f"{c} phase {_f(ph[c]['load_cpu_share'], '{:.0%}')}" for c in cols)
    srv = ", ".join(f"{c} {_f(ph[c]['server_cpu_share'], '{:.0%}')}" for c in cols)
    lines.append(f"client CPU share of the {doc['cpus']} cores: {cpu} (the load generator shares "
                 f"these cores with the server under test); server CPU share: {srv}")
    for c in cols:                         # where each side's CPU goes, per answered request
        th = ph[c].get("server_thread_us_per_request") or {}
        if th:
            lines.append(f"{c} CPU per request, us: load generator "
                         f"{_f(ph[c]['load_cpu_us_per_request'], '{:.1f}')}, server "
                         f"{sum(th.values()):.1f} = " + ", ".join(f"{k} {v:.1f}" for k, v in th.items() if v >= 0.05))
    wb = {c: ph[c].get("server_write_bytes_per_request") for c in cols}
    if any(v is not None for v in wb.values()):
        batch = doc["settings"]["batch"]
        lines.append("file bytes dirtied per request (server processes' write_bytes: what the disk "
                     "must write): " + ", ".join(
                         f"{c} {_f(v, '{:.0f}')}" + (f" ({v / batch:.0f} per event)" if v and batch > 1 else "")
                         for c, v in wb.items()))
    if "acceptance" in doc:
        a = doc["acceptance"]
        lines.append(f"P99 {_f(a['p99_ms'])} ms, error rate {ph['engine']['error_rate']:.4%}, "
                     f"errors incl. per-decision {a['errors']}: "
                     f"{'PASS' if a['pass'] else 'FAIL'} (bar: P99 <= {a['bar_p99_ms']:g} ms and "
                     f"0 errors); target P99 <= {a['target_p99_ms']:g} ms: "
                     f"{'met' if a['target_met'] else 'not met'}")
    return "\n".join(lines)


def plot(path: str, phases: dict[str, PhaseResult]) -> str:
    """HDR percentile curve (latency vs 1/(1-percentile), log x) of each phase into ``path``.
    Returns a message; never raises for a missing matplotlib."""
    try:
        import matplotlib          # lazy: optional (the 'plot' extra), needed here only
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt    # lazy: as matplotlib above
    except ImportError:
        return (f"plot: matplotlib is not installed, {path} not written "
                f"(pip install matplotlib, the optional 'plot' extra)")
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, ph in phases.items():
        if not ph.hist.get_total_count():
            continue
        xs, ys = [], []
        for it in ph.hist.get_percentile_iterator(5):
            if it.percentile >= 100.0:
                break
            xs.append(1.0 / (1.0 - it.percentile / 100.0))
            ys.append(it.value_iterated_to / 1e6)
        ax.plot(xs, ys, label=label)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title("risk-engine vs raw pyzmq echo: latency by percentile")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f"plot: wrote {os.path.abspath(path)}"
