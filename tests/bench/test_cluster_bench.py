"""bench.cluster --quick: one engine alone, three nodes with ack async and with ack sync (each
on its own three nats-servers), then two kills; every row of the report is printed with sane
figures, and nothing is left behind (slow: it starts seven engines and restarts two)."""
import glob
import os
import re
import tempfile

import pytest

import bench.cluster_nodes
from bench.cluster import main
from bench.engine_proc import EngineProcess, shm_entries

NUM = r"([\d,.]+)"
ROW = (r"^(1 node alone|3 nodes async|3 nodes sync)\s+(1|all)" + rf"\s+{NUM}" * 3 + r"\s+(\d+)"
       + r"\s+(-?[\d.]+)" * 5 + "$")


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--kills" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_quick_run_prints_every_row(capsys, monkeypatch):
    started = []

    class Recorded(EngineProcess):          # the real harness, each engine kept for the checks
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            started.append(self)
    monkeypatch.setattr(bench.cluster_nodes, "EngineProcess", Recorded)
    dirs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "bench-cluster-*")))
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():                 # the figures, for `pytest -s`
        print(out)
    rows = re.findall(ROW, out, re.M)
    assert [(r[0], r[1]) for r in rows] == [("1 node alone", "1"), ("3 nodes async", "1"), ("3 nodes sync", "1"),
                                          ("1 node alone", "all"), ("3 nodes async", "all"),
                                          ("3 nodes sync", "all")], out
    for _, _, p50, p99, rate, failed, cpu, eng, nats, _, rest in rows:
        assert 0 < float(p50) <= float(p99) and float(rate.replace(",", "")) > 0, out
        assert float(cpu) > 0 and float(eng) > 0 and float(nats) >= 0 and float(rest) >= 0, out
    assert [r[8] for r in rows if r[0] == "1 node alone"] == ["0.0", "0.0"], "no nats-servers alone"
    assert all(float(r[8]) > 0 for r in rows if r[0] != "1 node alone"), out
    assert re.search(r"^replication cost per decision .*: ack async [+-][\d.]+ us .*; ack sync [+-][\d.]+ us ",
                     out, re.M), out
    kills = re.findall(r"^kill (\d): n\d \((\d) partitions\): all served again after ([\d.]+) s", out, re.M)
    assert [k[0] for k in kills] == ["1", "2"] and all(int(k[1]) >= 2 for k in kills), out
    m = re.search(r"^failover \(3 nodes sync, lease_ttl_s 2 s; target TTL \+ 1 s = 3 s\): 2 kills: min ([\d.]+) s, "
                  r"median ([\d.]+) s, max ([\d.]+) s; \d of 2 within the target", out, re.M)
    assert m and 0 < float(m[1]) <= float(m[2]) <= float(m[3]), out
    assert re.search(r"^light load during the kills: [\d,]+ decisions, \d+ failed", out, re.M), out
    assert re.search(r"^failover time = from the kill -9 of a node serving partitions until every partition", out, re.M)
    assert len(started) == 7                # 1 + 3 + 3; the killed ones restarted in place
    assert all(e.proc.poll() is not None and shm_entries(e.instance) == [] for e in started)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "bench-cluster-*"))) <= dirs_before
