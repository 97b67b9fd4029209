"""deploy/prometheus/alerts.yml: valid for promtool, its unit tests pass, every alert carries a
severity, a summary and a runbook section, and every series it selects is one a real engine
(or its eBPF sidecar) exposes, with labels and label values that exist."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from bench.engine_proc import EngineProcess, free_port
from bpf import metric_names
from shm.types import ErrorCode
from tests.bpf.scrape import engine_exposition
from tests.deploy.promql import parse

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"
SEVERITIES = {"warning", "critical"}
TARGET_LABELS = {"job", "instance"}          # added by Prometheus to every scraped series
PROMETHEUS_SERIES = {"up"}                   # made by Prometheus per target, needs a job=


def _rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _promtool() -> str:
    """promtool's path; skip without it unless REQUIRE_PROMTOOL=1 (.ci/run installs it)."""
    path = shutil.which("promtool")
    if path:
        return path
    why = "promtool not installed (Debian: apt-get install prometheus; scripts/install_ci_tools.sh)"
    if os.environ.get("REQUIRE_PROMTOOL") == "1":
        pytest.fail(f"REQUIRE_PROMTOOL=1 but {why}", pytrace=False)
    pytest.skip(why)


def test_promtool_check_rules():
    r = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in r.stdout, r.stdout


def test_promtool_unit_tests_pass():
    r = subprocess.run([_promtool(), "test", "rules", str(ALERTS_TEST)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert len(tested) >= 5, tested


def _slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_severity_summary_and_a_runbook_section():
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    rules = _rules()
    assert rules and all("alert" in r for r in rules), "alerts.yml holds alerting rules only"
    names = [r["alert"] for r in rules]
    for r in rules:
        where = f"alert={r['alert']}"
        assert r["labels"]["severity"] in SEVERITIES, where
        summary = r["annotations"]["summary"]
        assert summary.startswith("risk-engine {{ $labels.instance }}: "), where
        path, _, anchor = r["annotations"]["runbook_url"].partition("#")
        assert path == "docs/OPERATIONS.md" and anchor in anchors, f"{where}: no section #{anchor}"
    assert len(set(names)) == len(names)


def test_the_issue_25_alerts_are_there():
    """Overload by reason, TIMEOUT decisions, GC pauses, snapshot failures and pause length,
    feature fill > 0.9 and evictions, worker restarts, dedup evictions, eBPF sidecar down."""
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    def alerting_on(name):
        return [a for a, e in exprs.items() if name in parse(e).names]
    for series in ("risk_overloaded_total", "risk_gc_pause_seconds_bucket",
                   "risk_snapshot_errors_total", "risk_snapshot_pause_seconds",
                   "risk_feature_table_fill_ratio", "risk_feature_evictions_total",
                   "risk_worker_restarts_total", "risk_dedup_evicted_total",
                   "risk_ebpf_requested", "risk_ebpf_enabled"):
        assert alerting_on(series), f"no alert on {series}"
    assert "reason" in parse(exprs["RiskEngineOverloaded"]).grouping
    timeouts = [a for a, e in exprs.items()
                if ("result", "=", "TIMEOUT") in parse(e).matchers_of("risk_requests_total")]
    assert timeouts, "no alert on TIMEOUT decisions"
    assert re.search(r"risk_feature_table_fill_ratio\s*>\s*0\.9\b", exprs["RiskEngineFeatureTableNearlyFull"])


def _allowed_values(label: str, exported: set[str]) -> set[str]:
    if label == "result":            # an error code shows up only once a request gets it
        return exported | {"ok"} | {c.name for c in ErrorCode}
    return exported


@pytest.mark.timeout(900)          # the session's one scraped engine may start here (busy CI)
@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_every_series_is_exported_by_a_real_engine(rule):
    """Names, label names and equality-matched label values, checked against the /metrics of
    an engine that served requests (tests/bpf/scrape.py) and, for risk_tcp_*, the sidecar's
    collector (bpf/metric_names.py SIDECAR, which test_dashboard checks against it). A typo
    here would make an alert that can never fire."""
    exp = engine_exposition()
    sel = parse(rule["expr"])
    where = f"alert={rule['alert']}"
    labels_in_expr: set[str] = set(TARGET_LABELS)
    for name in sel.names:
        if name in PROMETHEUS_SERIES:      # every target has one: the job says whose
            assert any(k == "job" for k, _, _ in sel.matchers_of(name)), f"{where}: {name} needs job="
            continue
        family = exp.family_of(name)
        if family is None:
            assert metric_names.family_of(name) in metric_names.SIDECAR, \
                f"{where}: {name} is exposed by neither the engine nor the sidecar"
            continue
        exported = exp.labels[family]
        labels_in_expr |= set(exported)
        for label, op, value in sel.matchers_of(name):
            assert label in exported or label in TARGET_LABELS, \
                f"{where}: {name} has no label {label} (it has {sorted(exported)})"
            if op == "=" and label in exported:
                assert value in _allowed_values(label, exported[label]), \
                    f"{where}: {name}{{{label}={value!r}}} never appears: {sorted(exported[label])}"
    assert sel.grouping <= labels_in_expr, f"{where}: grouping by {sel.grouping - labels_in_expr}"


def test_scrape_jobs_the_alerts_name_are_the_documented_ones():
    """`up{job=...}` only matches when Prometheus's job names are the ones docs/OPERATIONS.md
    configures."""
    documented = set(re.findall(r"job_name:\s*([\w-]+)", RUNBOOK.read_text()))
    for r in _rules():
        for name in parse(r["expr"]).names & PROMETHEUS_SERIES:
            for label, op, value in parse(r["expr"]).matchers_of(name):
                if label == "job":
                    assert op == "=" and value in documented, f"alert={r['alert']}: job {value}"


@pytest.mark.slow                  # its own engine and a Prometheus server, ~30 s
@pytest.mark.timeout(900)
def test_a_real_prometheus_evaluates_every_rule_against_a_real_engine(tmp_path):
    """promtool checks syntax; only an evaluation on real series shows a rule that errors at
    run time (e.g. many-to-many matching). Prometheus (the package that carries promtool)
    scrapes an engine as docs/OPERATIONS.md says, with the sidecar job pointing at a port
    nothing serves: every rule must evaluate healthy, RiskEngineDown stay inactive and
    RiskEngineEbpfSidecarDown become pending for that instance."""
    _promtool()
    prometheus = shutil.which("prometheus")
    assert prometheus, "promtool without the prometheus server: Debian ships both in one package"
    api = f"http://127.0.0.1:{free_port()}/api/v1"
    with EngineProcess(tmp_path, workers=1) as eng:
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "risk-engine", "static_configs": [
                    {"targets": [eng.metrics_bind], "labels": {"instance": "pay-1"}}]},
                {"job_name": "risk-engine-ebpf", "static_configs": [
                    {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"instance": "pay-1"}}]}]}))
        with open(tmp_path / "prometheus.log", "w") as log:
            proc = subprocess.Popen(
                [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address={api.split('/')[2]}"], stdout=log, stderr=log)
        try:
            # two scrapes in: rate() and increase() over the engine's series have values
            _wait_for(api, proc, "query?query=rate(risk_build_info[5m])",
                      lambda d: len(d["result"]) == 1)
            scraped = time.time()          # the rules' next evaluations see them
            rules = _wait_for(api, proc, "rules", lambda d: all(
                _evaluated_after(r, scraped) for g in d["groups"] for r in g["rules"])
                and any(r["name"] == "RiskEngineEbpfSidecarDown" and r["state"] != "inactive"
                        for g in d["groups"] for r in g["rules"]))
            rules = {r["name"]: r for g in rules["groups"] for r in g["rules"]}
        finally:
            proc.terminate()
            proc.wait(30)
    for name, r in rules.items():
        assert r["health"] == "ok", f"alert={name}: {r.get('lastError')}"
    assert rules["RiskEngineDown"]["state"] == "inactive"
    down = rules["RiskEngineEbpfSidecarDown"]["alerts"]
    assert [a["labels"]["instance"] for a in down] == ["pay-1"], down


def _evaluated_after(rule: dict, t: float) -> bool:
    """Did the rule's last evaluation (RFC 3339, nanoseconds) come after wall time ``t``?"""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", rule["lastEvaluation"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp() > t


def _wait_for(api: str, proc, path: str, done, timeout_s: float = 120) -> dict:
    """The ``data`` of Prometheus's ``/api/v1/{path}`` once ``done(data)`` holds (bounded)."""
    deadline, data = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{api}/{path}", timeout=5) as r:
                data = json.load(r)["data"]
        except (urllib.error.URLError, ConnectionError):
            data = None
        if data is not None and done(data):
            return data
        time.sleep(0.5)
    raise AssertionError(f"/api/v1/{path} not as expected within {timeout_s} s: {data}")
