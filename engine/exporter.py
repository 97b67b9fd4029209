"""Prometheus exporter: served by the supervisor, reading the control block at scrape time;
also /healthz (alive) and /ready (serving) for probes and load balancers.

No Python metric object is touched per event: the ingress and the workers write plain int64
cells (shm.control); this collector turns them into metric families when Prometheus
scrapes. ``/stats`` on the same port serves the same numbers as JSON for humans and scripts.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shm.control import (GC_BOUNDS_NS, KERNEL_BOUNDS_NS, LATENCY_BOUNDS_NS, N_CODES, OVERLOAD_REASONS,
                         CONN_CLOSE_REASONS, STAGES, STALL_NS, STALL_PHASES, TRANSPORTS, EventLog)
from shm.runtime.endpoints import parse_host_port
from shm.types import ACTION_NAMES, ErrorCode
from engine.enforcement import drop_log, metric_families as enforce_families
from engine.readiness import not_ready
from engine.status_file import processes
from ingress._dedup_kernels import EVICTED_EARLY as DEDUP_EVICTED_EARLY
from engine.cli import version


def _buckets(hist: np.ndarray, bounds_ns: np.ndarray):
    """[counts..., sum_ns] -> (cumulative (le, count) pairs, sum in seconds)."""
    counts = np.cumsum(hist[:-1])
    pairs = [(f"{b / 1e9:.9g}", float(c)) for b, c in zip(bounds_ns.tolist(), counts[:-1].tolist())]
    pairs.append(("+Inf", float(counts[-1])))
    return pairs, float(hist[-1]) / 1e9


class EngineCollector:
    def __init__(self, sup):
        self.sup = sup
        self.lock = threading.Lock()
        self.folded_hits: dict[str, int] = {}     # rule id -> hits of retired generations
        self.folded_errors: dict[str, int] = {}
        self.version = version()                  # read once: it parses metadata or setup.py

    # --- rule counters across generations ------------------------------------------------------

    def fold_generation(self, generation: int) -> None:
        """Add the counters of ``generation`` (about to have its row reused) to the totals."""
        if generation < 1 or generation not in self.sup.rulesets.specs:
            return
        with self.lock:
            for rid, h, e in self._rows_of(generation):
                self.folded_hits[rid] = self.folded_hits.get(rid, 0) + h
                self.folded_errors[rid] = self.folded_errors.get(rid, 0) + e

    def _rows_of(self, generation: int):
        spec = self.sup.rulesets.specs[generation]
        n = len(spec["rule_ids"])
        b = self.sup.block
        hits = np.zeros(n, np.int64)
        errs = np.zeros(n, np.int64)
        row = generation % 2
        for w in range(b.n_workers):
            if b.worker(w, "row_generation")[row] == generation:
                hits += b.rule_row(w, row, "rule_hits")[:n]
                errs += b.rule_row(w, row, "rule_errors")[:n]
        return zip(spec["rule_ids"], hits.tolist(), errs.tolist())

    def rule_totals(self) -> tuple[dict, dict, dict]:
        """(hits, errors, mode) by rule id: folded generations plus the live rows."""
        with self.lock:
            hits, errs = dict(self.folded_hits), dict(self.folded_errors)
        modes = {}
        rulesets = self.sup.rulesets
        for g in (rulesets.generation - 1, rulesets.generation):
            if g not in rulesets.specs:
                continue
            spec = rulesets.specs[g]
            modes.update(zip(spec["rule_ids"], spec["modes"]))
            for rid, h, e in self._rows_of(g):
                hits[rid] = hits.get(rid, 0) + h
                errs[rid] = errs.get(rid, 0) + e
        return hits, errs, modes

    # --- the scrape ----------------------------------------------------------------------------

    def collect(self):
        """The metric families; never while a snapshot holds the workers
        (SnapshotCoordinator.hold_lock)."""
        snapshots = self.sup.snapshots
        lock = snapshots.hold_lock if snapshots is not None else None
        if lock is None:
            yield from self._collect()
            return
        with lock:
            yield from self._collect()

    def _collect(self):
        b = self.sup.block
        if b is None or self.sup.rulesets is None or self.sup.rulesets.generation < 1:
            return                          # starting: nothing to count yet
        req = b.view("ingress.requests").reshape(len(TRANSPORTS), N_CODES)
        c = CounterMetricFamily("risk_requests", "Requests answered, by result (ok or error code) and transport",
                                labels=["result", "transport"])
        for t, tname in enumerate(TRANSPORTS):
            for code in np.flatnonzero(req[t]).tolist():
                name = "ok" if code == 0 else ErrorCode(code).name
                c.add_metric([name, tname], float(req[t, code]))
        yield c
        c = CounterMetricFamily("risk_decisions", "Decisions by action", labels=["action"])
        for i, a in enumerate(ACTION_NAMES):
            c.add_metric([a], float(b.view("ingress.decisions")[i]))
        yield c
        h = HistogramMetricFamily("risk_eval_duration_seconds",
                                  "End-to-end time in the engine per request (arrival to reply)",
                                  labels=["transport"])
        ev = b.view("ingress.eval_hist").reshape(len(TRANSPORTS), -1)
        for t, tname in enumerate(TRANSPORTS):
            pairs, s = _buckets(ev[t], LATENCY_BOUNDS_NS)
            h.add_metric([tname], pairs, s)
        yield h
        h = HistogramMetricFamily("risk_stage_duration_seconds",
                                  "Time per stage: parse_route, ring_wait, reply (per request); "
                                  "kernel (per event)", labels=["stage"])
        st = b.view("ingress.stage_hist").reshape(len(STAGES), -1)
        for i, sname in enumerate(STAGES):
            pairs, s = _buckets(st[i], LATENCY_BOUNDS_NS)
            h.add_metric([sname], pairs, s)
        kh = sum(b.worker(w, "kernel_hist") for w in range(b.n_workers))
        pairs, s = _buckets(kh, KERNEL_BOUNDS_NS)
        h.add_metric(["kernel"], pairs, s)
        yield h
        h = HistogramMetricFamily("risk_worker_pickup_delay_seconds",
                                  "Wait of the oldest event of each batch between the ingress's "
                                  "arrival stamp and its worker draining it", labels=["worker"])
        c = CounterMetricFamily("risk_worker_stalls", f"Worker steps slower than {STALL_NS / 1e6:g} ms, "
                                "by phase (the log at /stats has their times)", labels=["worker", "phase"])
        for w in range(b.n_workers):
            pairs, s = _buckets(b.worker(w, "pickup_hist"), LATENCY_BOUNDS_NS)
            h.add_metric([str(w)], pairs, s)
            for i, phase in enumerate(STALL_PHASES):
                c.add_metric([str(w), phase], float(b.worker(w, "stalls")[i]))
        yield h
        yield c
        hits, errs, modes = self.rule_totals()
        c = CounterMetricFamily("risk_rule_hits", "Times a rule fired", labels=["rule", "mode"])
        for rid, v in sorted(hits.items()):
            c.add_metric([rid, modes.get(rid, "retired")], float(v))
        yield c
        c = CounterMetricFamily("risk_rule_errors", "Rule evaluation errors (treated per rules.on_error)",
                                labels=["rule"])
        for rid, v in sorted(errs.items()):
            c.add_metric([rid], float(v))
        yield c
        g = GaugeMetricFamily("risk_ring_occupancy", "Slots published and not yet consumed",
                              labels=["worker", "direction"])
        for w, r in enumerate(self.sup.rings):
            rq, rs = r.occupancy()
            g.add_metric([str(w), "request"], float(rq))
            g.add_metric([str(w), "response"], float(rs))
        yield g
        sv = b.view
        yield CounterMetricFamily("risk_worker_restarts", "Worker processes restarted",
                                  value=float(sv("supervisor.worker_restarts")[0]))
        yield GaugeMetricFamily("risk_worker_restart_seconds", "How long the last restarted worker "
                                "was out: its death noticed to its successor's first loop (feature "
                                "rebuild included)", value=sv("supervisor.worker_restart_ns")[0] / 1e9)
        yield CounterMetricFamily("risk_ingress_restarts", "Ingress processes restarted",
                                  value=float(sv("supervisor.ingress_restarts")[0]))
        yield CounterMetricFamily("risk_ruleset_reload_errors", "Rulesets refused at reload",
                                  value=float(sv("supervisor.reload_errors")[0]))
        adm = self.sup.admin
        yield CounterMetricFamily("risk_admin_refused", "Admin requests answered with an error",
                                  value=float(adm.refused if adm else 0))
        yield CounterMetricFamily("risk_admin_internal_errors", "Admin requests that raised "
                                  "unexpectedly (answered INTERNAL; the supervisor's log says what)",
                                  value=float(adm.internal if adm else 0))
        yield CounterMetricFamily("risk_snapshots", "Feature-state snapshots written",
                                  value=float(sv("supervisor.snapshots")[0]))
        yield CounterMetricFamily("risk_snapshots_skipped", "Periodic snapshots not written because nothing "
                                  "changed since the last one (no journal record, admin change or reload)",
                                  value=float(sv("supervisor.snapshots_skipped")[0]))
        yield CounterMetricFamily("risk_snapshot_errors", "Snapshots that failed",
                                  value=float(sv("supervisor.snapshot_errors")[0]))
        yield CounterMetricFamily("risk_snapshot_refused", "Snapshots that failed validation at recovery "
                                  "(logged with path and reason; an older one was used)",
                                  value=float(sv("supervisor.snapshots_refused")[0]))
        yield CounterMetricFamily("risk_journal_corrupt_records", "Corrupt journal records met by recovery: "
                                  "skipped (journal.skip_corrupt_records) or held by the snapshot (each "
                                  "logged with file, offset and seq)",
                                  value=float(sv("supervisor.journal_corrupt_records")[0]))
        for fam, cell in ((GaugeMetricFamily("risk_journal_unavailable", "1 while a worker's journal cannot be "
                                             "written (full disk, I/O error): its events get JOURNAL_UNAVAILABLE",
                                             labels=["worker"]), "journal_unavailable"),
                          (CounterMetricFamily("risk_journal_write_errors", "Journal writes that failed (segment "
                                               "preparation, rotation, sync), by worker", labels=["worker"]), "journal_write_errors"),
                          (CounterMetricFamily("risk_replication_failed", "Decisions answered REPLICATION_FAILED "
                                               "(ack: sync), by worker", labels=["worker"]), "replication_failed")):
            for w in range(b.n_workers):
                fam.add_metric([str(w)], float(b.worker(w, cell)[0]))
            yield fam
        yield GaugeMetricFamily("risk_snapshot_pause_seconds", "How long the last snapshot held "
                                "the workers (table copy)", value=sv("supervisor.snapshot_pause_ns")[0] / 1e9)
        yield GaugeMetricFamily("risk_snapshot_pause_max_seconds", "Longest snapshot hold since start",
                                value=sv("supervisor.snapshot_pause_max_ns")[0] / 1e9)
        gen = self.sup.rulesets.generation
        spec = self.sup.rulesets.specs[gen]
        g = GaugeMetricFamily("risk_ruleset_info", "The active ruleset (value 1)",
                              labels=["name", "version", "generation"])
        for part in spec["label"].split("+"):
            name, _, ver = part.partition("@")
            g.add_metric([name, ver, str(gen)], 1.0)
        yield g
        yield GaugeMetricFamily("risk_requests_in_flight", "Requests waiting for decisions",
                                value=float(sv("ingress.inflight")[0]))
        c = CounterMetricFamily("risk_overloaded", "Requests refused with OVERLOADED, by why: shed "
                                "(the socket queue stood too long), ring_full, max_inflight, "
                                "worker_behind, peer_inflight", labels=["reason"])
        for reason, v in zip(OVERLOAD_REASONS, sv("ingress.overloaded").tolist()):
            c.add_metric([reason], float(v))
        yield c
        yield GaugeMetricFamily("risk_connections", "Connections open to the front door (socket "
                                "monitor; at most ingress.max_connections)",
                                value=float(sv("ingress.connections")[0]))
        c = CounterMetricFamily("risk_connections_closed", "Connections the ingress closed, by why: "
                                "over_cap (the idlest, over ingress.max_connections), bad_frames "
                                "(its peer sent a message of more than 1024 frames)",
                                labels=["reason"])
        for reason, v in zip(CONN_CLOSE_REASONS, sv("ingress.connections_closed").tolist()):
            c.add_metric([reason], float(v))
        yield c
        yield CounterMetricFamily("risk_ingress_python_messages", "Messages the compiled loop handed to Python: JSON, "
                                  "errors, refusals, declined batches", value=float(sv("ingress.py_messages")[0]))
        yield CounterMetricFamily("risk_deduplicated_requests", "Retries answered from the idempotency window",
                                  value=float(sv("ingress.deduplicated")[0]))
        yield CounterMetricFamily("risk_dedup_evicted", "Decided requests the idempotency window "
                                  "forgot before dedup_window_s (its entries or bytes were full)",
                                  value=float(sv("ingress.dedup_meta")[DEDUP_EVICTED_EARLY]))
        c = CounterMetricFamily("risk_worker_events", "Events evaluated", labels=["worker"])
        for w in range(b.n_workers):
            c.add_metric([str(w)], float(b.worker(w, "events")[0]))
        yield c
        h = HistogramMetricFamily("risk_gc_pause_seconds", "Garbage-collector pauses", labels=["process"])
        pairs, s = _buckets(sv("ingress.gc_hist"), GC_BOUNDS_NS)
        h.add_metric(["ingress"], pairs, s)
        for w in range(b.n_workers):
            pairs, s = _buckets(b.worker(w, "gc_hist"), GC_BOUNDS_NS)
            h.add_metric([f"worker {w}"], pairs, s)
        yield h
        g = GaugeMetricFamily("risk_python_blocks", "Python memory blocks allocated in the process "
                              "(sys.getallocatedblocks, refreshed every 50 ms; a worker's when idle): a "
                              "steady climb under steady traffic is a leak", labels=["process"])
        g.add_metric(["ingress"], float(sv("ingress.py_blocks")[0]))
        for w in range(b.n_workers):
            g.add_metric([f"worker {w}"], float(b.worker(w, "py_blocks")[0]))
        yield g
        yield from self._features()
        yield from self._processes()
        yield GaugeMetricFamily("risk_ebpf_enabled", "1 when the eBPF sidecar runs",
                                value=float(getattr(self.sup, "ebpf_enabled", 0)))
        yield GaugeMetricFamily("risk_ebpf_requested", "1 when started with serve --ebpf: with "
                                "risk_ebpf_enabled 0 the sidecar could not start or has died",
                                value=float(bool(getattr(self.sup, "want_ebpf", False))))
        yield from enforce_families(getattr(self.sup, "enforcement", None))
        g = GaugeMetricFamily("risk_build_info", "The engine's package version (value 1)",
                              labels=["version"])
        g.add_metric([self.version], 1.0)
        yield g

    def _features(self):
        """Fill and evictions of every feature and state table (counters kept in the tables'
        shared-memory headers by the kernels)."""
        store = getattr(self.sup, "features", None)
        if store is None or store.fs is None:
            return
        fill = GaugeMetricFamily("risk_feature_table_fill_ratio", "Used slots / capacity", labels=["feature"])
        ev = CounterMetricFamily("risk_feature_evictions", "Keys evicted (least recently seen) from a full probe window",
                                 labels=["feature"])
        late = CounterMetricFamily("risk_feature_late_dropped", "Updates dropped: event older than the window",
                                   labels=["feature"])
        locks = CounterMetricFamily("risk_feature_lock_timeouts", "Slot locks not acquired in time (a dead holder)",
                                    labels=["feature"])
        for arg, c in store.fs.counters().items():
            name = arg.split("_", 1)[1]
            fill.add_metric([name], float(c["fill_ratio"]))
            ev.add_metric([name], float(c["evictions"]))
            late.add_metric([name], float(c["late_dropped"]))
            locks.add_metric([name], float(c["lock_timeouts"]))
        yield from (fill, ev, late, locks)

    def _processes(self):
        cpu = CounterMetricFamily("risk_process_cpu_seconds", "CPU time per engine process", labels=["role"])
        rss = GaugeMetricFamily("risk_process_resident_memory_bytes", "RSS per engine process", labels=["role"])
        for row in processes(self.sup):
            try:
                p = psutil.Process(row["pid"])
                t = p.cpu_times()
                cpu.add_metric([row["role"]], t.user + t.system)
                rss.add_metric([row["role"]], float(p.memory_info().rss))
            except psutil.Error:
                continue
        yield cpu
        yield rss


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry = None
    collector: EngineCollector = None

    def do_GET(self):
        status = 200
        if self.path.startswith("/metrics"):
            body, ctype = generate_latest(self.registry), CONTENT_TYPE_LATEST
        elif self.path.startswith("/stats"):
            body, ctype = json.dumps(stats(self.collector), indent=1).encode(), "application/json"
        elif self.path in ("/healthz", "/ready"):
            status, text = _probe(self.path, self.collector.sup)
            body, ctype = text.encode(), "text/plain; charset=utf-8"
        else:
            self.send_error(404, "try /metrics, /stats, /healthz or /ready")
            return
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _probe(path: str, sup) -> tuple[int, str]:
    """/healthz: 200 while the supervisor answers (it starts before any child, so a start-up
    that compiles for minutes is alive). /ready: 200 once "serving" was announced and while
    the ingress and every worker run and serve and rules are loaded, else 503 with why
    (engine.readiness.not_ready)."""
    if path == "/healthz":
        return 200, "alive\n"
    why = not_ready(sup)
    return (503, "not ready: " + "; ".join(why) + "\n") if why else (200, "ready\n")


def stats(collector: EngineCollector) -> dict:
    """The metric families as plain JSON: {name: [{labels..., value}]}, plus "log": the
    newest entries of the engine's event logs (event_logs)."""
    out = {}
    for fam in collector.collect():
        rows = out.setdefault(fam.name, [])
        for s in fam.samples:
            rows.append({**s.labels, "sample": s.name, "value": s.value})
    if collector.sup.block is not None:
        out["log"] = {**event_logs(collector.sup.block), "enforce_drops": drop_log(collector.sup)}
    return out


def event_logs(b) -> dict:
    """Rare events with their wall time (ns since the epoch), newest last: worker stalls,
    TIMEOUT decisions and snapshots, to line a missed deadline up with its cause."""
    stalls = []
    for w in range(b.n_workers):
        for t, phase, d, n, woke, *_ in EventLog(b.worker(w, "stall_log")).entries():
            stalls.append({"time_ns": t, "worker": w, "phase": STALL_PHASES[phase], "ns": d,
                           "events": n, "woke": ("busy", "doorbell", "timeout")[woke]})
    timeouts = [{"time_ns": t, "worker": w, "timeouts": n, "max_age_ns": age,
                 "request_ring_occupancy_max": occ, "last_time_ns": last}
                for t, w, n, age, occ, last, *_ in EventLog(b.view("ingress.timeout_log")).entries()]
    snaps = [{"time_ns": t, "hold_ns": hold, "journal_fsync_ns": fs, "write_ns": wr,
              "hold_preempted": pre, "hold_waits": waits, "pause_wait_ns": pw, "copy_ns": cp}
             for t, hold, fs, wr, pre, waits, pw, cp in
             EventLog(b.view("supervisor.snapshot_log")).entries()]
    return {"stalls": sorted(stalls, key=lambda e: e["time_ns"]), "timeouts": timeouts,
            "snapshots": snaps}


class Exporter:
    """The HTTP endpoint (/metrics, /stats) over a collector, on its own daemon thread."""

    def __init__(self, sup, collector: EngineCollector):
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)          # the supervisor's own process_* metrics
        ep = parse_host_port(sup.cfg.metrics.bind, "metrics.bind")
        handler = type("Handler", (_Handler,), {"registry": self.registry, "collector": self.collector})
        server_cls = ThreadingHTTPServer
        if ":" in ep.host:                 # [IPv6]:PORT: an AF_INET6 listening socket
            server_cls = type("Server6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.server = server_cls((ep.host, ep.port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="metrics")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
