"""What the supervisor's parts ask of a cluster node (engine.cluster.node), without importing
nats: its metrics in /metrics and /stats beside the engine's (engine.exporter: partitions
owned, lease events, live nodes, the control plane's applied revision and lag, read at scrape
time) and its admin commands (engine.admin)."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine.exporter import EngineCollector


def metric_families(node):
    if node is None or node.table is None:
        return
    yield GaugeMetricFamily("risk_cluster_partitions", "Partitions of the cluster (cluster.partitions)",
                            value=float(node.cfg.partitions))
    yield GaugeMetricFamily("risk_cluster_partitions_owned", "Partitions this node holds a valid "
                            "lease on now (its OwnershipTable)", value=float(len(node.owned())))
    yield GaugeMetricFamily("risk_cluster_live_nodes", "Nodes whose heartbeat this node saw "
                            "within 3 lease TTLs, itself included", value=float(node.live_nodes))
    up = node.agent is not None and node.agent.error is None and node.agent._thread.is_alive()
    yield GaugeMetricFamily("risk_cluster_lease_agent_up", "1 while the lease agent runs",
                            value=float(up))
    c = CounterMetricFamily("risk_cluster_lease_events", "Lease events of this node's agent: "
                            "acquired, ready (taken over: servable), prepare_failed, renewed, "
                            "lost, released, nats_error (a lease-bucket operation or the lease "
                            "watch failed)", labels=["event"])
    for ev, n in node.counts.items():
        c.add_metric([ev], float(n))
    yield c
    yield from _replication(getattr(node, "replicator", None))
    ctl = node.control
    if ctl is None:
        return
    yield GaugeMetricFamily("risk_cluster_control_revision", "The last control-bucket revision "
                            "this node has applied", value=float(ctl.revision))
    yield CounterMetricFamily("risk_cluster_control_changes", "Control values that changed this "
                              "node's halt, lists or account states", value=float(ctl.applied))
    yield CounterMetricFamily("risk_cluster_control_errors", "Control values this node could "
                              "not apply (logged)", value=float(ctl.errors))
    yield GaugeMetricFamily("risk_cluster_control_lag_seconds", "Apply time of the last control "
                            "change minus its writer's wall clock at the write",
                            value=ctl.last_lag_ms / 1e3)
    rp = getattr(node, "ruleset", None)
    if rp is not None:
        rec = rp.record()
        yield GaugeMetricFamily("risk_cluster_ruleset_applied", "1 while this node serves the "
                                "cluster's ruleset (or the bucket has none), 0 when it could not "
                                "apply it (it serves its previous one)", value=float(rec["applied"]))
        yield CounterMetricFamily("risk_cluster_ruleset_errors", "Cluster ruleset values this node "
                                  "could not apply: bad value, missing or corrupt object, refused "
                                  "compile or reload (logged)", value=float(rec["errors"]))


def _replication(r):
    if r is None or r.rlog is None:
        return
    c = r.rlog.counters
    rep = CounterMetricFamily("risk_cluster_replication", "Replication stream: records and "
                              "messages published, publishes refused by fencing, fences written, "
                              "tailer steps failed (retried), partitions taken over and the "
                              "records their replays applied", labels=["what"])
    for what, n in (("records", c.published_records), ("messages", c.published_msgs),
                    ("refused", c.refused), ("fences", c.fences), ("errors", r.errors),
                    ("fence_refused", r.fence_refused), ("taken", r.taken),
                    ("replayed_records", r.replayed_records), ("trims", r.trims),
                    ("trim_refused", r.trim_refused), ("lag_errors", r.lag_errors)):
        rep.add_metric([what], float(n))
    yield rep
    lag_n = GaugeMetricFamily("risk_cluster_replication_lag_records", "Records this node journaled "
                              "(and answered) but has not published yet, per partition it publishes "
                              "(engine.cluster.lag; recomputed every second)", labels=["partition"])
    lag_s = GaugeMetricFamily("risk_cluster_replication_lag_seconds", "Age of the oldest of those "
                              "records, per partition (0: none waiting)", labels=["partition"])
    for p, (n, age_s) in r.lag.partitions.items():
        lag_n.add_metric([str(p)], float(n))
        lag_s.add_metric([str(p)], age_s)
    yield lag_n
    yield lag_s
    if r.snaps is not None:
        s = r.snaps.counters
        snap = CounterMetricFamily("risk_cluster_snapshot_objects", "Partition snapshot objects: "
                                   "written, restored (read back by a take-over or a "
                                   "write), refused (a failed check: logged, not used), "
                                   "full_replays (no usable snapshot), write_errors", labels=["what"])
        for what, n in (("written", s.written), ("restored", s.restored), ("refused", s.refused),
                        ("full_replays", s.full_replays), ("write_errors", r.snapshot_errors)):
            snap.add_metric([what], float(n))
        yield snap


class ClusterCollector(EngineCollector):
    """The engine's collector plus the cluster families (/stats reads the same families)."""

    def _collect(self):
        yield from super()._collect()
        yield from metric_families(getattr(self.sup, "cluster", None))


def admin_commands(sup) -> dict:
    """A cluster node's admin commands: the state changes go through the control bucket
    (engine.cluster.control_apply); ``cluster`` reports this node."""
    node = getattr(sup, "cluster", None)
    if node is None or node.control is None:
        return {}
    return {**node.control.commands(), "cluster": (lambda s, a: {"cluster": node.status()}, {})}
