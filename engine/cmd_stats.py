"""`risk-engine stats`: a running engine's metrics (through the admin plane) as a short summary
for a person, or every counter and histogram bucket as JSON (``--json``)."""
import json
import time

from engine.cmd_admin import send

HELP = ("print a running engine's metrics: a summary (rates, p50/p99/p99.9 per stage, errors by "
        "code, top rules), or every counter and bucket with --json")

QUANTILES = (0.5, 0.99, 0.999)


def add_arguments(p):
    p.add_argument("--instance", default="re", help="instance (default: re)")
    p.add_argument("--bind", help="admin address (default: from the instance's status file)")
    p.add_argument("--timeout-ms", type=int, default=30_000, help="reply timeout in ms (default 30000)")
    p.add_argument("--json", action="store_true", help="the raw metric families as JSON (every bucket)")
    p.add_argument("--interval-s", type=float, default=1.0,
                   help="the summary's rates are measured over this many seconds (default 1; 0: no rates)")
    p.add_argument("--top", type=int, default=10, help="rules shown in the summary (default 10)")


def run(args) -> int:
    code, rep = send(args, {"cmd": "stats"})
    if code != 0:
        return code
    if args.json:
        print(json.dumps(rep["stats"], indent=1))
        return 0
    first, t0 = rep["stats"], time.monotonic()
    rates = None
    if args.interval_s > 0:
        time.sleep(min(args.interval_s, 60.0))
        code, rep = send(args, {"cmd": "stats"})
        if code != 0:
            return code
        rates = (first, time.monotonic() - t0)
    code, st = send(args, {"cmd": "status"})
    print("\n".join(summary(rep["stats"], st if code == 0 else None, rates, args.top)))
    return 0


def _rows(stats: dict, family: str, sample: str | None = None) -> list[dict]:
    return [r for r in stats.get(family, []) if sample is None or r.get("sample") == sample]


def _total(stats: dict, family: str, sample: str, **labels) -> float:
    return sum(r["value"] for r in _rows(stats, family, sample)
               if all(r.get(k) == v for k, v in labels.items()))


def quantiles(stats: dict, family: str, label: str, value: str) -> tuple[int, list[float]]:
    """(count, the upper bound in seconds of the bucket holding each of QUANTILES) of one
    histogram series; inf when it is in the +Inf bucket."""
    buckets = sorted(((float(r["le"]), r["value"]) for r in _rows(stats, family, f"{family}_bucket")
                      if r.get(label) == value))
    if not buckets or buckets[-1][1] <= 0:
        return 0, []
    total = buckets[-1][1]
    return int(total), [next(le for le, c in buckets if c >= q * total) for q in QUANTILES]


def _ms(s: float) -> str:
    return "+Inf" if s == float("inf") else f"{s * 1e3:.3g} ms"


def summary(stats: dict, status: dict | None, rates, top: int) -> list[str]:
    """The lines `risk-engine stats` prints: ``rates`` is (an earlier stats, seconds between)."""
    out = []
    if status:
        out.append(f"generation {status.get('generation')}, ruleset {status.get('ruleset')}"
                   f"{', reloading' if status.get('reloading') else ''}")
    req = "risk_requests_total"
    ok = _total(stats, "risk_requests", req, result="ok")
    allreq = _total(stats, "risk_requests", req)
    events = _total(stats, "risk_worker_events", "risk_worker_events_total")
    if rates is not None:
        before, dt = rates
        d_req = allreq - _total(before, "risk_requests", req)
        d_ok = ok - _total(before, "risk_requests", req, result="ok")
        d_ev = events - _total(before, "risk_worker_events", "risk_worker_events_total")
        out.append(f"rates over {dt:.1f} s: {d_req / dt:.1f} requests/s ({(d_req - d_ok) / dt:.1f} "
                   f"errors/s), {d_ev / dt:.1f} events/s")
    decisions = ", ".join(f"{r['action']} {r['value']:.0f}"
                          for r in _rows(stats, "risk_decisions", "risk_decisions_total"))
    out.append(f"since start: {allreq:.0f} requests ({ok:.0f} ok), {events:.0f} events; "
               f"decisions: {decisions or 'none'}")
    out.append("latency since start (upper bound of the bucket holding each quantile):")
    out.append(f"  {'stage':<24} {'count':>10} {'p50':>10} {'p99':>10} {'p99.9':>10}")
    series = [("risk_eval_duration_seconds", "transport", r["transport"], f"request ({r['transport']})")
              for r in _rows(stats, "risk_eval_duration_seconds", "risk_eval_duration_seconds_count")]
    series += [("risk_stage_duration_seconds", "stage", r["stage"],
                r["stage"] + (" (per event)" if r["stage"] == "kernel" else ""))
               for r in _rows(stats, "risk_stage_duration_seconds", "risk_stage_duration_seconds_count")]
    for family, label, value, name in series:
        n, qs = quantiles(stats, family, label, value)
        cols = [_ms(q) for q in qs] if n else ["-"] * len(QUANTILES)
        out.append(f"  {name:<24} {n:>10} " + " ".join(f"{c:>10}" for c in cols))
    errors = {}
    for r in _rows(stats, "risk_requests", req):
        if r["result"] != "ok" and r["value"]:
            errors[r["result"]] = errors.get(r["result"], 0) + r["value"]
    out.append("errors by code: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(
        errors.items(), key=lambda kv: -kv[1])) or "none"))
    overload = [f"{r['reason']} {r['value']:.0f}" for r in _rows(stats, "risk_overloaded", "risk_overloaded_total")
                if r.get("value")]
    if overload:
        out.append("overloaded by reason: " + ", ".join(overload))
    hits = sorted(_rows(stats, "risk_rule_hits", "risk_rule_hits_total"), key=lambda r: -r["value"])
    hits = [r for r in hits if r["value"]][:max(0, top)]
    out.append("top rules by hits: " + (", ".join(f"{r['rule']} {r['value']:.0f}"
                                                     f"{' (shadow)' if r.get('mode') == 'shadow' else ''}"
                                                     for r in hits) or "none fired"))
    rule_errors = [f"{r['rule']} {r['value']:.0f}" for r in _rows(stats, "risk_rule_errors", "risk_rule_errors_total")
                   if r["value"]]
    if rule_errors:
        out.append("rule evaluation errors: " + ", ".join(rule_errors))
    return out
