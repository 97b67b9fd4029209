"""docs/grafana/risk-engine.json: valid, generated, and querying only metrics that exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpf import dashboard, metric_names
from bpf.collector import SocketCollector
from bpf.loader import Snapshot

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


def test_sidecar_list_matches_the_collector():
    snap = Snapshot(bytes_rx=1, srtt_count=1, transitions={("SYN_RECV", "ESTABLISHED"): 1})
    reg = CollectorRegistry()
    reg.register(SocketCollector(lambda: snap, 5555))
    fams = {f.name + ("_total" if f.type == "counter" else ""): f.type
            for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert fams == metric_names.SIDECAR


def test_engine_list_matches_the_exporter():
    src_path = ROOT / "engine" / "exporter.py"
    if not src_path.exists():
        pytest.skip("engine/exporter.py not built yet")
    src = src_path.read_text()
    for name in metric_names.ENGINE:
        base = name[:-len("_total")] if metric_names.ENGINE[name] == "counter" else name
        assert f'"{base}"' in src, f"{base} not exported by engine/exporter.py"
