"""bench.kernel's own parts on a small ruleset: the synthetic rules compile, the example row
picks the default config's stateless packs (it broke silently once feature packs joined the
default config), and the timing loop calls the kernel over every batch it claims to."""
from __future__ import annotations

import numpy as np
import pytest

from bench import kernel as bk
from shm.runtime.config import load_config
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
    from shm.features.table import counters
    from rules.features import feature_set_for
    cfg = load_config(None)
    rs = compile_ruleset(list(cfg.rules.files), cfg.schema, features=feature_set_for(cfg),
                         thresholds=cfg.rules.thresholds, on_error=cfg.rules.on_error)
    ev = bk.events(cfg.schema, 256)
    assert bk.time_kernel(rs, ev, 64, 256, arrival_ns=1_764_300_000_000_000_000) > 0
    assert counters(rs.feature_arrays[0])["fill"] > 100         # txn_count_1m: one key per account


def test_the_batched_issue6_config_is_the_100_rule_ruleset_with_4_features():
    """bench/batched_4f.yaml (docs/BENCH.md) is what its name says, and its rules check."""
    from shm.runtime.config import load_config
    from rules.compiler import check_ruleset
    from rules.features import feature_set_for, feature_symbols
    cfg = load_config("bench/batched_4f.yaml")
    assert [f.rsplit("/", 1)[1] for f in cfg.rules.files] == ["payments.yaml", "pretrade.yaml"]
    assert sorted(cfg.features) == ["amount_sum_1h", "first_seen_s", "max_amount_10m", "txn_count_1m"]
    _, compiled = check_ruleset(list(cfg.rules.files), cfg.schema, feature_symbols(feature_set_for(cfg)))
    assert 100 <= len(compiled) <= 110


@pytest.mark.slow                # a bench run per strategy, 25 s: make test-slow (CI)
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


def test_the_floor_counts_the_lines_the_staged_prefetch_touches():
    """bench.features --floor: _lines_touched against a set of lines built slot by slot (the
    home slot whole, the first line of each slot the walk passes, the found slot whole), on
    a small, full-ish table; then the command prints a row per key count."""
    import subprocess
    import sys
    import numpy as np
    from bench import features as bf
    from shm.features import table as T
    maps, tabs, cap = bf._tables(300, False, False)
    try:
        for t, sw in zip(tabs, (bf.SW_C, bf.SW_S, bf.SW_M, bf.SW_A)):
            keys = np.concatenate([np.arange(300, dtype=np.uint64) * bf.MUL + np.uint64(o) for o in range(3)])
            want = 0
            for k in keys:
                home, lines = T._home(k, cap), set()
                for i in range(bf.PROBE):
                    s = (home + i) % cap
                    b = T.SLOT_BASE + s * sw
                    found = t[b] == k or t[b + 1] == 0
                    whole = i == 0 or found or i == bf.PROBE - 1
                    lines |= set(range(b // 8, (b + sw - 1) // 8 + 1)) if whole else {b // 8}
                    if found:
                        break
                want += len(lines)
            assert bf._lines_touched(t, cap, sw, keys) == want
    finally:
        t = None                        # no view may outlive the maps
        bf._free(maps, tabs)
    p = subprocess.run([sys.executable, "-m", "bench.features", "--floor", "--keys", "100,2000", "--events", "5000"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["100"], ["2000"])]
    assert len(rows) == 2
    for r in rows:
        lines, ns_line, floor = float(r[1]), float(r[2]), float(r[3])
        assert 9 <= lines <= 40 and ns_line > 0 and floor == pytest.approx(lines * ns_line, rel=0.05, abs=1)


def test_the_features_bench_draws_both_key_distributions_over_more_keys_than_a_table():
    """--features times Zipf and uniform keys: a quarter-million strided events whose
    uniform accounts outnumber a batched_4f table (so they evict), Zipf ones far fewer."""
    cfg = load_config("bench/batched_4f.yaml")
    z, u = bk._pool_events(cfg, "zipf"), bk._pool_events(cfg, "uniform")
    assert len(z) == len(u) == bk.POOL_EVENTS and z.strides[0] > cfg.schema.dtype.itemsize
    cap = cfg.features["txn_count_1m"]["capacity"]
    n_z, n_u = len(np.unique(z["account_id"])), len(np.unique(u["account_id"]))
    assert n_z < cap < n_u and n_z < n_u / 2
    assert (bk._pool_events(cfg, "zipf")["account_id"] == z["account_id"]).all()


def test_target_line_reports_the_100_rule_batch_64_figure():
    row = {"ruleset": "synthetic-100", "batches": {64: {"kernel_ns_per_event": 97.26}}}
    assert bk.target_line([{"ruleset": "synthetic-10"}, row]).endswith("97.3 ns/event (<= 100: met)")
    row["batches"][64]["kernel_ns_per_event"] = 180.0
    assert "NOT met" in bk.target_line([row]) and "no synthetic-100" in bk.target_line([])


def test_batch1_line_reports_every_ruleset_at_one_event_per_call():
    rows = [{"ruleset": "synthetic-100", "batches": {1: {"kernel_ns_per_event": 650.4}, 64: {}}},
            {"ruleset": "stateless example packs (default config)", "batches": {1: {"kernel_ns_per_event": 481.0}}}]
    line = bk.batch1_line(rows)
    assert line.endswith("synthetic-100 650; stateless example packs (default config) 481")
    assert bk.batch1_line([]).endswith("no rows")
