"""``python -m bench.targets``: the table on given figures, and tiny real runs of the command
against the echo processes (seconds; the engine's start-up is left to real bench runs)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.targets import ROWS, cpu_table, evaluate, per_request, raw_table, round_order, table

REPO = Path(__file__).resolve().parents[2]
# what the table reads of a run: both load generators must report it
READ = {"generator", "sent", "ok", "error_count", "decision_error_count", "errors",
        "decision_errors", "requests_per_s", "events_per_s", "p50_us", "p99_us", "p999_us",
        "cpu_us_per_request"}


def doc(gen="c", **kw) -> dict:
    """A load generator's document with the given figures."""
    d = {"generator": gen, "sent": 100, "ok": 100, "error_count": 0, "decision_error_count": 0,
         "errors": {}, "decision_errors": {}, "requests_per_s": 1000.0, "events_per_s": 1000.0,
         "p50_us": 100.0, "p99_us": 1000.0, "p999_us": 2000.0,
         "cpu_us_per_request": 20.0}
    return {**d, **kw}


def test_rows_are_medians_of_per_round_ratios_with_their_range():
    runs = {"100x1": {"pyzmq_echo": [doc(requests_per_s=1000.0, p99_us=1000.0)] * 3,
                      "engine": [doc(requests_per_s=r, p99_us=p) for r, p in
                                 ((900.0, 1100.0), (1200.0, 1300.0), (1000.0, 1150.0))]},
            "32x64": {"engine": [doc(events_per_s=e) for e in (0.9e6, 1.2e6, 1.1e6)],
                      "compiled_echo": [doc(events_per_s=2e6)] * 3}}
    got = {(r["scenario"], r["row"]): r for r in (evaluate(row, runs, {}) for row in ROWS)}
    rps = got[("100x1", "requests/s vs pyzmq echo")]
    assert rps["values"] == [0.9, 1.2, 1.0] and rps["measured"] == 1.0 and rps["met"] is True
    p99 = got[("100x1", "p99 vs pyzmq echo")]
    assert p99["measured"] == pytest.approx(1.15) and p99["met"] is True
    assert got[("32x64", "events/s")]["measured"] == 1.1e6 and got[("32x64", "events/s")]["met"]
    ratio = got[("32x64", "events/s vs compiled echo")]
    assert ratio["measured"] == pytest.approx(0.55) and ratio["met"] is True
    assert got[("1x1", "p50 vs pyzmq echo")]["met"] is None        # no 1x1 round ran
    text = table(list(got.values()))
    assert "1.00x" in text and "0.90x-1.20x (3)" in text and "1,100,000" in text


def test_one_error_in_any_round_misses_the_errors_target_and_is_shown_by_name():
    eng = [doc(), doc(error_count=1, errors={"NO_REPLY": 1}, decision_error_count=2,
                      decision_errors={"TIMEOUT": 2}), doc()]
    runs = {"100x1": {"engine": eng, "pyzmq_echo": [doc()] * 3}}
    row = next(r for r in ROWS if r.label == "errors")
    got = evaluate(row, runs, {})
    assert got["measured"] == 3 and got["met"] is False
    assert "no" in table([got]).splitlines()[1].split()[-1]
    raw = raw_table(runs, {})
    assert "NO_REPLY 1, decision TIMEOUT 2" in raw


def test_a_missing_baseline_is_not_available_never_met():
    runs = {"32x64": {"engine": [doc()], "compiled_echo": []}}
    row = ROWS[0]
    got = evaluate(row, runs, {"compiled_echo": "no --compiled mode"})
    assert got["met"] is None and "compiled_echo not available: no --compiled mode" in got["why"]
    assert "n/a (compiled_echo not available" in table([got])


def test_server_cpu_is_per_request_by_thread_and_summed_in_the_table():
    before = {"ingress: main": 1.0, "ingress: ZMQbg/IO/0": 2.0}
    after = {"ingress: main": 1.5, "ingress: ZMQbg/IO/0": 3.0, "worker 0: main": 0.25}
    got = per_request(before, after, {"requests_total": 100_000, "sent": 90_000})
    assert got == pytest.approx({"ingress: main": 5.0, "ingress: ZMQbg/IO/0": 10.0,
                                 "worker 0: main": 2.5})
    assert per_request(before, after, {"sent": 0}) == {}
    runs = {"100x1": {"engine": [doc(server_threads_us=got),
                                 doc(server_threads_us={**got, "ingress: main": 7.0}), None]}}
    text = cpu_table(runs)
    # medians of two rounds per thread, the busiest first, and the median of the totals
    assert "100x1    engine         total   18.5: ingress: ZMQbg/IO/0 10.0, ingress: main 6.0, " \
           "worker 0: main 2.5" in text


def test_rounds_alternate_the_order():
    assert [round_order(["a", "b", "c"], k) for k in range(3)] == [
        ["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]


def test_help():
    r = subprocess.run([sys.executable, "-m", "bench.targets", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--quick" in r.stdout and "--rounds" in r.stdout


def _tiny(tmp_path, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "bench.targets", "--quick", "--scenarios", "1x1",
                        "--targets", "pyzmq_echo,compiled_echo", "--duration", "0.5",
                        "--warmup", "0.1", "--json", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    return r, json.loads(out.read_text())


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed: no C load generator")
def test_a_tiny_run_against_the_echoes_prints_the_table_and_json(tmp_path):
    r, d = _tiny(tmp_path)
    # exit 1: the engine was not selected, so its target line cannot be met
    assert r.returncode == 1, r.stderr
    assert "load generator: c" in r.stdout
    assert "1x1    p50 vs pyzmq echo" in r.stdout and "n/a (engine not available" in r.stdout
    assert d["generator"] == "c" and d["rounds"] == 2
    echo = d["runs"]["1x1"]["pyzmq_echo"]
    assert len(echo) == 2
    for run in echo:
        assert READ <= set(run)
        assert run["sent"] > 0 and run["sent"] == run["ok"] + run["error_count"]
        assert run["errors"] == {} and run["p50_us"] > 0
        assert sum(run["server_threads_us"].values()) > 0    # the echo's own CPU per request
    assert "server CPU per request" in r.stdout
    compiled = d["runs"]["1x1"]["compiled_echo"]
    # before the compiled echo exists its line says so; after, it ran like the other
    assert ("compiled_echo" in d["unavailable"] and compiled == []) or len(compiled) == 2


def test_without_gcc_it_says_so_and_runs_the_python_generator(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}           # no gcc on it
    r, d = _tiny(tmp_path, env)
    assert "gcc not found" in r.stderr and "falling back to the Python load generator" in r.stderr
    assert "load generator: python" in r.stdout
    assert d["generator"] == "python"
    for run in d["runs"]["1x1"]["pyzmq_echo"]:
        assert READ <= set(run)
        assert run["generator"] == "python" and run["sent"] == run["ok"] + run["error_count"] > 0
