"""bench.replication runs tiny (seconds) on its own 3-server cluster and prints a sane row per
mode: records and messages acknowledged, microseconds per record, ack percentiles."""
import re

import pytest

from bench.replication import main


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--records-per-msg" in capsys.readouterr().out


def test_tiny_run_prints_a_cost_per_record_for_each_mode(capsys):
    assert main(["--seconds", "0.2", "--rounds", "1", "--records-per-msg", "16", "--partitions", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^replication publish cost: 3 nats-servers on loopback \(R3\), record \d+ B", out, re.M)
    rows = re.findall(r"^(sync|async-16)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                      out, re.M)
    assert sorted(r[0] for r in rows) == ["async-16", "sync"], out
    for mode, recs, msgs, s, us, p50, p99 in rows:
        recs, msgs = int(recs.replace(",", "")), int(msgs.replace(",", ""))
        assert recs > 0 and msgs > 0 and float(s) > 0 and float(us) > 0
        assert 0 < float(p50) <= float(p99)
        assert recs == msgs if mode == "sync" else recs == 16 * msgs
    m = re.search(r"^replay \(ordered consumer, every message checked\), 4 partitions: ([\d,]+) records in ([\d,]+) "
                  r"messages, [\d.]+ s, ([\d.]+) us/record$", out, re.M)
    assert m and int(m[1].replace(",", "")) > 0 and float(m[3]) > 0, out
