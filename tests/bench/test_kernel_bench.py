"""bench.kernel's own parts on a small ruleset: the synthetic rules compile, the example row
picks the default config's stateless packs (it broke silently once feature packs joined the
default config), and the timing loop calls the kernel over every batch it claims to."""
from __future__ import annotations

import numpy as np
import pytest

from bench import kernel as bk
from engine.config import load_config
from rules import compile_ruleset


def test_stateless_files_are_the_default_packs_without_state():
    cfg = load_config(None)
    files = bk.stateless_files(cfg)
    assert files and set(files) < set(cfg.rules.files)
    names = " ".join(files)
    assert "payments.yaml" in names and "velocity" not in names and "throttle" not in names


def test_time_kernel_evaluates_every_event_of_every_batch(tmp_path):
    cfg = load_config(None)
    p = tmp_path / "r.yaml"
    p.write_text(bk.synthetic_rules(10))
    rs = compile_ruleset([str(p)], cfg.schema, cache_dir=str(tmp_path / "cache"))
    ev = bk.events(cfg.schema, 256)
    calls = []
    real = rs.entry

    class Spy:                       # count what the loop passes to the kernel
        entry = staticmethod(lambda *a: (calls.append(len(a[0])), real(*a)))
        kernel = entry
        new_buffers = staticmethod(rs.new_buffers)
        feature_arrays = rs.feature_arrays

    ns = bk.time_kernel(Spy, ev, 4, 40)
    assert ns > 0 and len(calls) == 5 * 10 and set(calls) == {4}
    # what is timed is a real evaluation: the entry point's decisions equal the reference's
    resp, bits, hits, errors = rs.new_buffers(32)
    real(ev[:32], np.zeros(32, np.int64), resp, bits, hits, errors)
    ref = [rs.reference(ev[i]) for i in range(32)]
    assert resp["action"].tolist() == [a for a, _, _ in ref]
    assert resp["score"].tolist() == [s for _, s, _ in ref]
    assert len({a for a, _, _ in ref}) > 1           # the events exercise several outcomes


def test_time_kernel_passes_the_feature_tables(tmp_path):
    """--features times the default ruleset with its tables: the timed calls must update
    them (a kernel called without its tables would not even run)."""
    from engine.features.table import counters
    from rules.features import feature_set_for
    cfg = load_config(None)
    rs = compile_ruleset(list(cfg.rules.files), cfg.schema, features=feature_set_for(cfg),
                         thresholds=cfg.rules.thresholds, on_error=cfg.rules.on_error)
    ev = bk.events(cfg.schema, 256)
    assert bk.time_kernel(rs, ev, 64, 256, arrival_ns=1_764_300_000_000_000_000) > 0
    assert counters(rs.feature_arrays[0])["fill"] > 100         # txn_count_1m: one key per account


def test_the_batched_issue6_config_is_the_100_rule_ruleset_with_4_features():
    """bench/batched_4f.yaml (docs/BENCH.md) is what its name says, and its rules check."""
    from engine.config import load_config
    from rules.compiler import check_ruleset
    from rules.features import feature_set_for, feature_symbols
    cfg = load_config("bench/batched_4f.yaml")
    assert [f.rsplit("/", 1)[1] for f in cfg.rules.files] == ["payments.yaml", "pretrade.yaml"]
    assert sorted(cfg.features) == ["amount_sum_1h", "first_seen_s", "max_amount_10m", "txn_count_1m"]
    _, compiled = check_ruleset(list(cfg.rules.files), cfg.schema, feature_symbols(feature_set_for(cfg)))
    assert 100 <= len(compiled) <= 110


def test_the_features_bench_runs_every_prefetch_strategy_and_the_split():
    """bench.features on small tables: a row per key count with the four strategies (the
    best of them is the ns/event column), and --split's three passes."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "bench.features", "--keys", "100,2000", "--events", "20000"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["100"], ["2000"])]
    assert len(rows) == 2
    for r in rows:
        best, modes = float(r[1]), [float(x) for x in r[3:7]]
        assert best == pytest.approx(min(modes), abs=1) and all(m > 0 for m in modes)
    p = subprocess.run([sys.executable, "-m", "bench.features", "--split", "--keys", "100", "--events", "5000"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "home prefetch" in p.stdout and len([ln for ln in p.stdout.splitlines() if ln.split()[:1] == ["100"]]) == 1
