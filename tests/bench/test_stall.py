"""bench.stall (issue 22: no refusal storms): its arguments, its reading of /stats, and one
tiny run against a real engine."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.stall import counters, main

ROOT = Path(__file__).resolve().parents[2]


def test_counters_sum_every_reason_and_transport():
    def row(name, value, **labels):
        return {**labels, "sample": name + "_total", "value": value}
    stats = {"risk_overloaded": [row("risk_overloaded", 3, reason="worker_behind"),
                                 row("risk_overloaded", 4, reason="ring_full")],
             "risk_requests": [row("risk_requests", 5, result="TIMEOUT", transport="binary"),
                               row("risk_requests", 1, result="TIMEOUT", transport="json"),
                               row("risk_requests", 90, result="ok", transport="binary")],
             "risk_requests_in_flight": [{"sample": "risk_requests_in_flight", "value": 2}]}
    assert counters(stats) == {"refused": 7, "behind": 3, "timeouts": 6, "answered": 96, "inflight": 2}
    with pytest.raises(RuntimeError, match="no /stats"):
        counters(None)


@pytest.mark.parametrize("args", [["--stall-ms", "1000", "--interval", "1"], ["--clients", "0"],
                                  ["--worker", "2", "--workers", "2"], ["--stalls", "0"]])
def test_impossible_arguments_are_refused_before_any_engine_starts(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "need client counts" in capsys.readouterr().err


@pytest.mark.slow                # an engine start and a 5 s load: make test-slow (CI)
def test_a_tiny_run_reports_every_stall():
    """Two stalls of 30 ms under one client: both windows printed, the counts are numbers,
    the exit code says whether the target was met (0 or 1: the machine may be loaded)."""
    p = subprocess.run([sys.executable, "-m", "bench.stall", "--clients", "1", "--duration", "4.5",
                        "--stalls", "2", "--stall-ms", "30", "--workers", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    out = p.stdout
    assert "1 client(s):" in out and "no stall (1 s): refused" in out, out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().split(" ")[0] in ("1", "2")
            and ln.rstrip().endswith(("met", "MISSED"))]
    assert [r[0] for r in rows] == ["1", "2"], out
    for r in rows:
        assert 25 <= float(r[1]) < 1000 and r[2] == "1" and all(x.isdigit() for x in r[3:8]), r
    assert f"stalls meeting the target (refused + timeouts <= 1 in flight at its start): " in out
    assert (p.returncode == 0) == (out.count("MISSED") == 0)
