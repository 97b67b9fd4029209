"""The engine-side percentiles bench.overload and bench.latency print, from two /stats reads."""
from __future__ import annotations

import pytest

from bench.engine_proc import engine_latency


def _stats(counts: dict[str, float], transport: str = "binary") -> dict:
    rows = [{"transport": transport, "le": le, "sample": "risk_eval_duration_seconds_bucket", "value": v}
            for le, v in counts.items()]
    rows.append({"transport": "json", "le": "+Inf", "sample": "risk_eval_duration_seconds_bucket",
                 "value": 1e9})                                     # another transport: ignored
    return {"risk_eval_duration_seconds": rows}


def test_percentile_bounds_come_from_the_bucket_deltas():
    before = _stats({"0.001": 100, "0.005": 100, "0.05": 100, "+Inf": 100})
    # between the reads: 60 under 1 ms, 39 more under 5 ms, 1 more under 50 ms
    after = _stats({"0.001": 160, "0.005": 199, "0.05": 200, "+Inf": 200})
    e = engine_latency(before, after)
    assert e == {"count": 100, "p50_le_ms": 1.0, "p99_le_ms": 5.0, "max_le_ms": 50.0}


def test_nothing_admitted_and_no_histogram():
    s = _stats({"0.001": 5, "+Inf": 5})
    assert engine_latency(s, s) == {"count": 0}
    assert engine_latency(None, {}) is None


@pytest.mark.slow                # a bench run, 9 s: make test-slow (CI)
def test_overload_mode_answers_every_request_and_reports_both_sides():
    """`risk-engine bench --overload` (bench.overload) against a real engine, short."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "bench.latency", "--overload", "--duration", "1.5"],
                       capture_output=True, text=True, timeout=240, cwd=root)
    assert p.returncode == 0, p.stdout + p.stderr          # 0: never answered == 0
    assert "never answered 0" in p.stdout
    assert "decided" in p.stdout and "engine side, admitted" in p.stdout
    assert "RssAnon" in p.stdout
    assert "the sender used" in p.stdout


def test_split_pins_every_thread_of_the_engine_tree():
    """--split's pinning reaches a child's threads, not just the process it was given."""
    import os
    import subprocess
    import sys
    import time

    import psutil
    import pytest

    from bench.overload import _pin_tree
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    code = ("import subprocess, sys, threading, time; threading.Thread(target=time.sleep, args=(30,), "
            "daemon=True).start(); c = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(30)']); print('up', flush=True); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 10
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        _pin_tree(parent.pid, {cpus[0]})
        tree = [psutil.Process(parent.pid)] + psutil.Process(parent.pid).children(recursive=True)
        tids = [t.id for p in tree for t in p.threads()]
        assert len(tree) == 2 and len(tids) >= 3
        assert all(os.sched_getaffinity(t) == {cpus[0]} for t in tids)
    finally:
        for p in psutil.Process(parent.pid).children(recursive=True):
            p.kill()
        parent.kill()
        parent.wait()
