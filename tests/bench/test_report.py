"""The table, the JSON document's verdicts and the plot, from real histograms."""
from __future__ import annotations

import sys
import types

from bench import report
from bench.latency import build_document
from bench.loadgen import LoadSpec, new_histogram
from bench.phase import PhaseResult


def phase(label: str, values_ns: list[int], errors: dict | None = None) -> PhaseResult:
    h = new_histogram()
    for v in values_ns:
        h.record_value(v)
    errors = errors or {}
    ok = len(values_ns) - sum(v for k, v in errors.items() if k != "NO_REPLY")
    return PhaseResult(label, LoadSpec("tcp://x", duration_s=2.0), 2, sent=len(values_ns) + errors.get("NO_REPLY", 0),
                       ok=ok, events_ok=ok, errors=errors, hist=h, load_cpu_s=0.5, wall_s=2.0,
                       server_cpu_s=1.0)


def args(**kw):
    base = dict(clients=4, processes=2, duration=2.0, warmup=0.0, rate=0.0, batch=1,
                transport="binary", target=None, config=None, echo_only=False, keys="zipf",
                zipf_s=0.99)
    base.update(kw)
    return types.SimpleNamespace(**base)


def doc_for(engine: PhaseResult, echo: PhaseResult) -> dict:
    s = {"engine": report.summarise(engine, 2), "echo": report.summarise(echo, 2)}
    return build_document(args(), s, {"ingress": {"pauses": 3, "total_ms": 1.5}}, [])


def test_ratios_and_pass_line():
    d = doc_for(phase("engine", [2_000_000] * 100), phase("echo", [1_000_000] * 100))
    assert abs(d["ratio"]["p50_ms"] - 2.0) < 0.002 and abs(d["ratio"]["p99_ms"] - 2.0) < 0.002
    assert d["ratio"]["requests_per_s"] == 1.0
    assert d["acceptance"]["pass"] and not d["acceptance"]["target_met"]
    t = report.table(d)
    assert "PASS" in t and "2.00x" in t and "ingress: 3" in t
    assert "shares these cores" in t


def test_one_error_fails_the_bar_and_is_shown_by_code():
    d = doc_for(phase("engine", [1_000_000] * 99, {"OVERLOADED": 1}), phase("echo", [1_000_000] * 100))
    e = d["phases"]["engine"]
    assert e["error_count"] == 1 and e["sent"] == 99 + 0 and e["ok"] == 98
    assert not d["acceptance"]["pass"]
    t = report.table(d)
    assert "FAIL" in t and "OVERLOADED=1" in t


def test_a_decision_error_fails_the_bar():
    e = phase("engine", [1_000_000] * 100)
    e.decision_errors = {"TIMEOUT": 1}
    d = doc_for(e, phase("echo", [1_000_000] * 100))
    assert d["acceptance"]["errors"] == 1 and not d["acceptance"]["pass"]
    assert "TIMEOUT=1" in report.table(d)


def test_slow_p99_fails_the_bar():
    d = doc_for(phase("engine", [1_000_000] * 98 + [9_000_000] * 2), phase("echo", [1_000_000] * 100))
    assert d["phases"]["engine"]["p99_ms"] > 8 and not d["acceptance"]["pass"]


def test_plot_writes_a_png_or_says_matplotlib_is_missing(tmp_path, monkeypatch):
    phases = {"engine": phase("engine", list(range(1000, 2_000_000, 1000))),
              "echo": phase("echo", list(range(1000, 1_000_000, 1000)))}
    out = tmp_path / "p.png"
    msg = report.plot(str(out), phases)
    if "not installed" not in msg:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # as if not installed
    msg = report.plot(str(tmp_path / "q.png"), phases)
    assert "matplotlib is not installed" in msg and not (tmp_path / "q.png").exists()


def test_missed_open_loop_rate_is_reported():
    e = phase("engine", [1_000_000] * 100)
    e.spec = LoadSpec("tcp://x", duration_s=2.0, rate=500.0)
    e.unsent = 900
    d = doc_for(e, phase("echo", [1_000_000] * 100))
    assert d["phases"]["engine"]["rate_reached"] is False
    assert "TARGET RATE NOT REACHED (900 requests never sent" in report.table(d)


def test_bench_is_a_risk_engine_subcommand():
    from engine.cli import build_parser
    a = build_parser().parse_args(["bench", "--echo-only", "--clients", "3", "--rate", "10"])
    assert a._module.__name__ == "bench.cmd_bench"
    assert (a.clients, a.rate, a.echo_only, a.duration) == (3, 10.0, True, 30.0)
