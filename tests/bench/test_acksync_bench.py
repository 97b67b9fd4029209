"""bench.acksync runs tiny on its own 3-server cluster and one engine node per mode and prints
a sane row per mode (slow: it starts an engine twice); bench.acksync_trace traces a few
decisions of one ack: sync node and prints every stage with a timeline for each (slow)."""
import re

import pytest

import bench.acksync_trace as trace
from bench.acksync import main


@pytest.mark.parametrize("entry", [main, trace.main])
def test_help_exits_zero(capsys, entry):
    with pytest.raises(SystemExit) as e:
        entry(["--help"])
    assert e.value.code == 0 and "--decisions" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_run_prints_latency_and_rate_for_each_mode(capsys):
    assert main(["--decisions", "20", "--seconds", "0.5", "--clients", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^cluster.ack per decision: 3 nats-servers on loopback \(R3\), 1 node", out, re.M)
    rows = re.findall(r"^(sync|async)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", out, re.M)
    assert [r[0] for r in rows] == ["sync", "async"], out
    for _, p50, p99, rate in rows:
        assert 0 < float(p50) <= float(p99) and int(rate) > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_tiny_trace_times_every_decision_through_every_stage(capsys):
    assert trace.main(["--decisions", "20"]) == 0
    out = capsys.readouterr().out
    traced = re.search(r"^ack: sync, one decision's timeline: .*; (\d+) of 20 decisions traced$", out, re.M)
    assert traced and int(traced[1]) >= 15, out       # an unmatched decision is left out, counted
    for name in trace.STAGES:
        m = re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
        assert m and float(m[1]) >= 0, (name, out)
    assert float(re.search(r"^total\s+([\d.]+)", out, re.M)[1]) > 0
