"""bench.acksync runs tiny on its own 3-server cluster and one engine node per mode and prints
a sane row per mode (slow: it starts an engine twice)."""
import re

import pytest

from bench.acksync import main


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
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
