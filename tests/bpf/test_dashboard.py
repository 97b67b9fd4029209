"""docs/grafana/risk-engine.json: valid, generated, and querying only metrics that exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bpf import dashboard, metric_names
from bpf.collector import SocketCollector
from bpf.loader import Snapshot
from tests.bpf.scrape import Exposition, engine_exposition
from tests.deploy.promql import parse

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "risk-engine.json"
NAME_RE = re.compile(r"\brisk_[a-z0-9_]+")


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(DASHBOARD.read_text())


def _exprs(board):
    for p in board["panels"]:
        for t in p.get("targets", []):
            yield p, t["expr"]


def test_file_is_the_generator_output(board):
    assert board == json.loads(dashboard.render()), "regenerate: python -m bpf.dashboard > " + str(DASHBOARD)


def test_every_queried_metric_is_listed(board):
    seen = 0
    for p, expr in _exprs(board):
        names = NAME_RE.findall(expr)
        assert names, f"panel {p['title']!r} queries no risk_ metric: {expr}"
        for n in names:
            assert metric_names.family_of(n) is not None, f"panel {p['title']!r}: unknown metric {n}"
            seen += 1
    assert seen >= 20


def test_required_views_present(board):
    used = {metric_names.family_of(n) for _, e in _exprs(board) for n in NAME_RE.findall(e)}
    for need in ("risk_eval_duration_seconds", "risk_decisions_total", "risk_rule_hits_total",
                 "risk_ring_occupancy", "risk_gc_pause_seconds", "risk_tcp_srtt_seconds",
                 "risk_tcp_retransmits_total"):
        assert need in used, need
    heat = [p for p in board["panels"] if p["type"] == "heatmap"]
    assert heat and "risk_eval_duration_seconds_bucket" in heat[0]["targets"][0]["expr"]
    exprs = " ".join(e for _, e in _exprs(board))
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, transport) (rate(risk_eval_duration_seconds_bucket" in exprs
    assert "topk(10, sum by (rule, mode) (increase(risk_rule_hits_total" in exprs


def test_layout_ids_unique_and_no_overlap(board):
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def _sidecar_exposition() -> Exposition:
    """What the sidecar's collector exposes, every labelled family with a sample."""
    snap = Snapshot(bytes_rx=1, srtt_count=1, transitions={("SYN_RECV", "ESTABLISHED"): 1})
    reg = CollectorRegistry()
    reg.register(SocketCollector(lambda: snap, 5555))
    return Exposition(generate_latest(reg).decode())


def test_sidecar_list_matches_the_collector():
    assert _sidecar_exposition().types == metric_names.SIDECAR


@pytest.mark.timeout(900)          # the session's one scraped engine may start here (busy CI)
def test_engine_list_is_what_a_real_engine_exposes():
    exp = engine_exposition()
    exposed = {n: t for n, t in exp.types.items() if n.startswith("risk_")}
    assert exposed == metric_names.ENGINE


def test_instance_variable_and_every_query_filters_on_it(board):
    """One dashboard for many engines: the `instance` variable lists every engine that exports
    risk_build_info, and every series of every query is limited to the picked instances."""
    var = {v["name"]: v for v in board["templating"]["list"]}["instance"]
    assert var["type"] == "query" and var["query"]["query"] == "label_values(risk_build_info, instance)"
    assert var["multi"] and var["includeAll"]
    n = 0
    for p in board["panels"]:
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            sel = parse(t["expr"])
            assert sel.names, t["expr"]
            for name in sel.names:
                assert ("instance", "=~", "$instance") in sel.matchers_of(name), \
                    f"panel {p['title']!r}: {name} not filtered on $instance: {t['expr']}"
                n += 1
    assert n >= 30


def _panels_using(board, family: str) -> list[dict]:
    return [p for p, e in _exprs(board) if any(metric_names.family_of(x) == family
                                               for x in parse(e).names)]


def test_issue_25_panels_present(board):
    """Overload by reason, feature fill and evictions, snapshot pauses, worker stalls, build."""
    for family in ("risk_overloaded_total", "risk_feature_table_fill_ratio",
                   "risk_feature_evictions_total", "risk_snapshot_pause_seconds",
                   "risk_worker_stalls_total", "risk_build_info"):
        assert _panels_using(board, family), f"no panel queries {family}"
    over = [e for p, e in _exprs(board) if "risk_overloaded_total" in parse(e).names]
    assert any("reason" in parse(e).grouping for e in over), over


@pytest.mark.timeout(900)
def test_every_queried_series_is_exported_by_a_real_engine(board):
    """Names and label names of every query, against a real engine's /metrics (the sidecar's
    against its collector, test_sidecar_list_matches_the_collector)."""
    engine, sidecar = engine_exposition(), _sidecar_exposition()
    for p, expr in _exprs(board):
        sel = parse(expr)
        labels = {"instance", "job"}
        for name in sel.names:
            exp = engine if engine.family_of(name) else sidecar
            family = exp.family_of(name)
            assert family, f"panel {p['title']!r}: {name} is exposed by neither the engine nor the sidecar"
            labels |= set(exp.labels[family])
            for label, _, _ in sel.matchers_of(name):
                assert label in exp.labels[family] or label in ("instance", "job"), \
                    f"panel {p['title']!r}: {name} has no label {label}"
        assert sel.grouping <= labels, f"panel {p['title']!r}: grouping by {sel.grouping - labels}"


def test_issue_23_enforcement_panels_present(board):
    for family in ("risk_enforce_enabled", "risk_enforce_dropped_packets_total",
                   "risk_enforce_passed_packets_total", "risk_enforce_map_entries",
                   "risk_enforce_update_seconds"):
        assert _panels_using(board, family), f"no panel queries {family}"
