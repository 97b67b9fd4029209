"""bench.journal runs tiny (seconds) and prints sane figures: every policy row, the path table
with ns per event for both append paths and the copy, the batch-64 target line, replay."""
import re

import pytest

import bench.journal_follow as follow
from bench.journal import main


@pytest.mark.parametrize("entry, option", [(main, "--quick"), (follow.main, "--segment-mib")])
def test_help_exits_zero(capsys, entry, option):
    with pytest.raises(SystemExit) as e:
        entry(["--help"])
    assert e.value.code == 0 and option in capsys.readouterr().out


def test_journal_follow_runs_tiny_and_prints_both_readers_each_round(capsys):
    """bench.journal_follow: a row per reader per round, both readers in every round."""
    assert follow.main(["--segment-mib", "1", "--records", "50", "--reads", "3", "--rounds", "2"]) == 0
    rows = re.findall(r"^\s+(\d+) (full|follower)\s+([\d.]+)\s+([\d.]+)$", capsys.readouterr().out, re.M)
    assert sorted((int(r), who) for r, who, *_ in rows) == [(1, "follower"), (1, "full"),
                                                            (2, "follower"), (2, "full")]
    assert all(float(a) > 0 and float(b) > 0 for *_, a, b in rows)


def test_tiny_run_prints_ns_per_event_and_the_target(tmp_path, capsys):
    assert main(["--dir", str(tmp_path), "--seconds", "0.05", "--batches", "1,64", "--rounds", "2",
                 "--segment-mb", "1", "--replay-events", "20000"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(none|interval_ms|batch)\s+(\d+)\s+([\d,]+)\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                      out, re.M)
    assert sorted((p, int(b)) for p, b, *_ in rows) == sorted(
        (p, b) for p in ("none", "interval_ms", "batch") for b in (1, 64))
    for _, _, eps, p50, p99, ns in rows:
        assert int(eps.replace(",", "")) > 0 and 0 < float(p50) <= float(p99) and float(ns) > 0
    paths = {int(m[0]): [float(x) for x in m[1:]] for m in
             re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)x$", out, re.M)}
    assert sorted(paths) == [1, 64]
    for batch_ns, slots_ns, copy_ns, r1, r2 in paths.values():
        assert min(batch_ns, slots_ns, copy_ns) > 0
        assert r1 == pytest.approx(batch_ns / copy_ns, rel=0.02, abs=0.01)
    assert re.search(r"^target append_batch <= 50 ns/event at batch 64: (met|NOT met) \([\d.]+ ns/event\)$",
                     out, re.M)
    assert re.search(r"^replay \(read \+ validate, page cache\): 20,000 events", out, re.M)
    assert re.search(r"^replay merged by arrival over 4 writers: 20,000 events", out, re.M)
