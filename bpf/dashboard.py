"""Build the Grafana dashboard over the engine's and the sidecar's metrics.

    python -m bpf.dashboard > docs/grafana/risk-engine.json

The committed JSON is this function's output (a test checks they match), so edit here.
Queries use only names from bpf/metric_names.py, each filtered on the `instance` variable.
"""
from __future__ import annotations

import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
NOT_OK = 'result!="ok"'
# Engines to show: every instance that exports risk_build_info (docs/OPERATIONS.md gives an
# engine and its eBPF sidecar one shared `instance` label, so the TCP row follows it too).
INSTANCE = {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
            "query": {"query": "label_values(risk_build_info, instance)", "refId": "instance"},
            "definition": "label_values(risk_build_info, instance)", "refresh": 2, "sort": 1,
            "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0}


def sel(metric: str, matchers: str = "") -> str:
    """``metric`` limited to the instances picked in the ``instance`` variable, plus
    ``matchers`` (e.g. 'result!="ok"'). Every query selects through here."""
    return f'{metric}{{instance=~"$instance"{"," + matchers if matchers else ""}}}'


def _rate(metric: str, matchers: str = "") -> str:
    return f"rate({sel(metric, matchers)}[{RATE}])"


def _in_range(metric: str) -> str:
    """The increase over the dashboard's time range."""
    return f"increase({sel(metric)}[$__range])"


def _target(expr: str, legend: str = "", ref: str = "A", **extra) -> dict:
    t = {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    t.update(extra)
    return t


def _panel(kind: str, title: str, targets: list[dict], unit: str = "short", **extra) -> dict:
    p = {"type": kind, "title": title, "datasource": DS,
         "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    p.update(extra)
    return p


def _quantiles(metric: str, by: str, qs=(0.5, 0.99)) -> list[dict]:
    keep = f"le, {by}" if by else "le"
    tag = f" {{{{{by}}}}}" if by else ""
    return [_target(f"histogram_quantile({q}, sum by ({keep}) ({_rate(metric + '_bucket')}))",
                    f"p{int(q * 100)}{tag}") for q in qs]


def _rows() -> list[tuple[str, list[dict]]]:
    ts = "timeseries"
    latency = [
        _panel("heatmap", "Eval latency heatmap (risk_eval_duration_seconds)",
               [_target("sum by (le) (increase("
                        f"{sel('risk_eval_duration_seconds_bucket')}[{RATE}]))",
                        "{{le}}", format="heatmap")], unit="s",
               options={"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                        "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64}}),
        _panel(ts, "Eval latency P50 / P99 by transport",
               _quantiles("risk_eval_duration_seconds", "transport"), unit="s"),
        _panel(ts, "Stage latency P99 (parse_route, ring_wait, kernel, reply)",
               _quantiles("risk_stage_duration_seconds", "stage", qs=(0.99,)), unit="s"),
        _panel(ts, "Requests/s by result",
               [_target(f"sum by (result) ({_rate('risk_requests_total')})", "{{result}}")],
               unit="reqps"),
    ]
    decisions = [
        _panel(ts, "Decisions/s by action",
               [_target(f"sum by (action) ({_rate('risk_decisions_total')})", "{{action}}")],
               unit="ops", fieldConfig={"defaults": {"unit": "ops", "custom": {
                   "stacking": {"mode": "normal", "group": "A"}}}, "overrides": []}),
        _panel("bargauge", "Top 10 rules by hits (time range)",
               [_target(f"topk(10, sum by (rule, mode) ({_in_range('risk_rule_hits_total')}))",
                        "{{rule}} ({{mode}})", instant=True)],
               options={"orientation": "horizontal", "displayMode": "gradient",
                        "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}),
        _panel(ts, "Rule errors/s",
               [_target(f"sum by (rule) ({_rate('risk_rule_errors_total')})", "{{rule}}")],
               unit="ops"),
        _panel("table", "Active ruleset", [_target(sel("risk_ruleset_info"), instant=True,
                                                   format="table")]),
    ]
    # issue 25: what the alerts in deploy/prometheus/alerts.yml watch, per instance
    operations = [
        _panel(ts, "OVERLOADED refusals/s by reason",
               [_target(f"sum by (instance, reason) ({_rate('risk_overloaded_total')})",
                        "{{instance}} {{reason}}")], unit="reqps"),
        _panel(ts, "Requests/s answered with an error (TIMEOUT: default action, not the rules)",
               [_target(f"sum by (instance, result) ({_rate('risk_requests_total', NOT_OK)})",
                        "{{instance}} {{result}}")], unit="reqps"),
        _panel(ts, "Feature table fill (alert over 0.9)",
               [_target(f"max by (instance, feature) ({sel('risk_feature_table_fill_ratio')})",
                        "{{instance}} {{feature}}")], unit="percentunit"),
        _panel(ts, "Feature evictions/s and idempotency-window evictions/s",
               [_target(f"sum by (instance, feature) ({_rate('risk_feature_evictions_total')})",
                        "{{instance}} {{feature}}"),
                _target(f"sum by (instance) ({_rate('risk_dedup_evicted_total')})",
                        "{{instance}} dedup window")], unit="ops"),
        _panel(ts, "Snapshot hold of the workers (last, longest since start)",
               [_target(f"max by (instance) ({sel('risk_snapshot_pause_seconds')})",
                        "{{instance}} last hold"),
                _target(f"max by (instance) ({sel('risk_snapshot_pause_max_seconds')})",
                        "{{instance}} longest hold")], unit="s"),
        _panel(ts, "Worker stalls/s (steps over 10 ms) by worker and phase",
               [_target(f"sum by (instance, worker, phase) ({_rate('risk_worker_stalls_total')})",
                        "{{instance}} worker {{worker}} {{phase}}")], unit="ops"),
        _panel("table", "Build (risk_build_info)",
               [_target(sel("risk_build_info"), instant=True, format="table")]),
    ]
    internals = [
        _panel(ts, "Ring occupancy (slots)",
               [_target(sel("risk_ring_occupancy"), "worker {{worker}} {{direction}}")]),
        _panel(ts, "GC pause P99 by process",
               _quantiles("risk_gc_pause_seconds", "process", qs=(0.99,)), unit="s"),
        _panel(ts, "Share of time in GC by process",
               [_target(f"sum by (process) ({_rate('risk_gc_pause_seconds_sum')})",
                        "{{process}}")], unit="percentunit"),
        _panel(ts, "Restarts, reload errors, snapshot failures (time range)",
               [_target(f"{_in_range('risk_worker_restarts_total')}", "worker restarts"),
                _target(f"{_in_range('risk_ingress_restarts_total')}", "ingress restarts"),
                _target(f"{_in_range('risk_ruleset_reload_errors_total')}", "reload errors"),
                _target(f"{_in_range('risk_snapshot_errors_total')}", "snapshot failures")]),
        _panel(ts, "In flight, deduplicated/s, events/s by worker",
               [_target(sel("risk_requests_in_flight"), "in flight"),
                _target(f"{_rate('risk_deduplicated_requests_total')}", "deduplicated/s"),
                _target(f"sum by (worker) ({_rate('risk_worker_events_total')})",
                        "events/s worker {{worker}}")]),
        _panel(ts, "CPU by process role",
               [_target(f"sum by (role) ({_rate('risk_process_cpu_seconds_total')})",
                        "{{role}}")], unit="percentunit"),
        _panel(ts, "RSS by process role",
               [_target(f"sum by (role) ({sel('risk_process_resident_memory_bytes')})",
                        "{{role}}")],
               unit="bytes"),
    ]
    tcp = [
        _panel("stat", "eBPF sidecar enabled",
               [_target(f"max({sel('risk_ebpf_enabled')})", "enabled")],
               options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False}}),
        _panel(ts, "TCP srtt P50 / P99 (front door, eBPF)",
               _quantiles("risk_tcp_srtt_seconds", ""), unit="s"),
        _panel(ts, "TCP retransmits/s",
               [_target(f"sum({_rate('risk_tcp_retransmits_total')})", "retransmits/s")],
               unit="ops"),
        _panel(ts, "TCP connections", [_target(f"sum({sel('risk_tcp_connections')})", "open")]),
        _panel(ts, "TCP bytes/s by direction",
               [_target(f"sum by (direction) ({_rate('risk_tcp_bytes_total')})",
                        "{{direction}}")], unit="Bps"),
        _panel(ts, "TCP state transitions/s",
               [_target(f"sum by (from, to) ({_rate('risk_tcp_state_transitions_total')})",
                        "{{from}} -> {{to}}"),
                _target(f"sum({_rate('risk_tcp_conn_table_full_total')})",
                        "untracked (map full)")], unit="ops"),
    ]
    stat = {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}}
    # no `sum by (reason|list)`: an engine with enforce.mode off exposes these families
    # without samples, and the series keep their labels for the legend anyway
    enforce = [
        _panel("stat", "Kernel enforcement enabled",
               [_target(f"max({sel('risk_enforce_enabled')})", "enabled")], options=stat),
        _panel(ts, "Packets/s dropped in the kernel, by list; passed",
               [_target(_rate("risk_enforce_dropped_packets_total"), "dropped {{reason}}"),
                _target(_rate("risk_enforce_passed_packets_total"), "passed")], unit="pps"),
        _panel(ts, "Enforced list entries in the kernel's maps",
               [_target(sel("risk_enforce_map_entries"), "{{list}}")]),
        _panel(ts, "Admin list change to kernel map, P50 / P99",
               _quantiles("risk_enforce_update_seconds", ""), unit="s"),
    ]
    return [("Latency", latency), ("Decisions and rules", decisions),
            ("Operations (deploy/prometheus/alerts.yml)", operations),
            ("Engine internals", internals), ("TCP (eBPF sidecar)", tcp),
            ("Kernel enforcement (enforce:, XDP/TC)", enforce)]


def build() -> dict:
    """The dashboard as a dict (Grafana schemaVersion 39)."""
    panels, y, pid = [], 0, 1
    for title, row in _rows():
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for p in row:                       # left to right, 8 units high, wrap at 24
            w = 24 if p["type"] == "heatmap" else 12
            if x + w > 24:
                x, y = 0, y + 8
            panels.append(dict(p, id=pid, gridPos={"h": 8, "w": w, "x": x, "y": y}))
            pid, x = pid + 1, x + w
        y += 8
    return {
        "title": "risk-engine", "uid": "risk-engine", "tags": ["risk-engine", "zeromq", "ebpf"],
        "description": "Decisions, latency, rules, overload, feature tables, snapshots, GC "
                       "and front-door TCP, per instance (docs/OPERATIONS.md)",
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "timezone": "utc",
        "templating": {"list": [{"name": "datasource", "label": "Prometheus",
                                 "type": "datasource", "query": "prometheus",
                                 "current": {}, "hide": 0}, INSTANCE]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
