"""Every metric family name the engine and the sidecar expose, as Prometheus shows it.

The Grafana dashboard (docs/grafana/risk-engine.json) may only query names listed here;
tests/bpf/test_dashboard.py enforces it, checks SIDECAR against what the sidecar's collector
really yields, and ENGINE against what a real engine's /metrics exposes. Counters carry their
``_total`` suffix; histograms are listed by base name (samples add _bucket, _count, _sum).
"""
from __future__ import annotations

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# engine/exporter.py, in its order; tests/bpf/test_dashboard.py checks this is exactly what a
# real engine's /metrics exposes (process_* of the supervisor's standard collector aside).
ENGINE: dict[str, str] = {
    "risk_requests_total": COUNTER,               # {result, transport}
    "risk_decisions_total": COUNTER,              # {action}
    "risk_eval_duration_seconds": HISTOGRAM,      # {transport}
    "risk_stage_duration_seconds": HISTOGRAM,     # {stage}
    "risk_worker_pickup_delay_seconds": HISTOGRAM,  # {worker}
    "risk_worker_stalls_total": COUNTER,          # {worker, phase}
    "risk_rule_hits_total": COUNTER,              # {rule, mode}
    "risk_rule_errors_total": COUNTER,            # {rule}
    "risk_ring_occupancy": GAUGE,                 # {worker, direction}
    "risk_worker_restarts_total": COUNTER,
    "risk_worker_restart_seconds": GAUGE,
    "risk_ingress_restarts_total": COUNTER,
    "risk_ingress_python_messages_total": COUNTER,
    "risk_ruleset_reload_errors_total": COUNTER,
    "risk_admin_refused_total": COUNTER,
    "risk_admin_internal_errors_total": COUNTER,
    "risk_snapshots_total": COUNTER,
    "risk_snapshot_errors_total": COUNTER,
    "risk_snapshot_refused_total": COUNTER,
    "risk_snapshots_skipped_total": COUNTER,
    "risk_journal_corrupt_records_total": COUNTER,
    "risk_journal_unavailable": GAUGE,            # {worker}
    "risk_replication_failed_total": COUNTER,     # {worker}; cluster ack: sync
    "risk_journal_write_errors_total": COUNTER,   # {worker}
    "risk_snapshot_pause_seconds": GAUGE,
    "risk_snapshot_pause_max_seconds": GAUGE,
    "risk_ruleset_info": GAUGE,                   # {name, version, generation}
    "risk_requests_in_flight": GAUGE,
    "risk_overloaded_total": COUNTER,             # {reason}
    "risk_connections": GAUGE,
    "risk_connections_closed_total": COUNTER,     # {reason}
    "risk_deduplicated_requests_total": COUNTER,
    "risk_dedup_evicted_total": COUNTER,
    "risk_worker_events_total": COUNTER,          # {worker}
    "risk_gc_pause_seconds": HISTOGRAM,           # {process}
    "risk_python_blocks": GAUGE,                  # {process}
    "risk_feature_table_fill_ratio": GAUGE,       # {feature}
    "risk_feature_evictions_total": COUNTER,      # {feature}
    "risk_feature_late_dropped_total": COUNTER,   # {feature}
    "risk_feature_lock_timeouts_total": COUNTER,  # {feature}
    "risk_process_cpu_seconds_total": COUNTER,    # {role}
    "risk_process_resident_memory_bytes": GAUGE,  # {role}
    "risk_ebpf_enabled": GAUGE,
    "risk_ebpf_requested": GAUGE,
    "risk_enforce_enabled": GAUGE,                # engine.enforcement (enforce:)
    "risk_enforce_dropped_packets_total": COUNTER,  # {reason}: the list holding the source
    "risk_enforce_passed_packets_total": COUNTER,
    "risk_enforce_map_entries": GAUGE,            # {list}
    "risk_enforce_update_seconds": HISTOGRAM,     # admin list change: engine list -> kernel map
    "risk_enforce_auto_blocks_total": COUNTER,    # {outcome}: block_source rules (engine.autoblock)
    "risk_build_info": GAUGE,                     # {version}
}

# bpf/collector.py (the sidecar's own endpoint); every series has a {port} label.
SIDECAR: dict[str, str] = {
    "risk_ebpf_enabled": GAUGE,
    "risk_tcp_srtt_seconds": HISTOGRAM,
    "risk_tcp_retransmits_total": COUNTER,
    "risk_tcp_state_transitions_total": COUNTER,  # {from, to}
    "risk_tcp_connections": GAUGE,
    "risk_tcp_bytes_total": COUNTER,              # {direction: rx|tx}
    "risk_tcp_conn_table_full_total": COUNTER,
}

ALL: dict[str, str] = {**ENGINE, **SIDECAR}


def family_of(sample_name: str) -> str | None:
    """The listed family a sample name belongs to (histogram suffixes stripped), or None."""
    if sample_name in ALL:
        return sample_name
    for suffix in ("_bucket", "_count", "_sum"):
        base = sample_name[: -len(suffix)] if sample_name.endswith(suffix) else None
        if base and ALL.get(base) == HISTOGRAM:
            return base
    return None
