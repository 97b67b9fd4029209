"""The cluster against one engine alone, in one run: latency, throughput, the CPU a decision
costs, and failover time (issue 24, "Benchmark").

    python -m bench.cluster [--decisions 500] [--seconds 5] [--clients 4] [--rounds 2]
                            [--kills 10] [--idle-s 2] [--quick]

Setups, each started fresh (its own engines, and for the cluster its own three nats-servers
on loopback, R3), 1 worker per engine, 8 partitions, the default lease TTL:
- ``1 node alone``: one engine without ``cluster:``; clients talk to its ingress;
- ``3 nodes async`` / ``3 nodes sync``: three engine nodes with ``cluster.ack`` async / sync;
  clients are cluster-mode clients (ingress/cluster_client.py), each request sent straight to
  its partition's owner.
All run the same config (the features keyed by the shard key, as a cluster requires) and the
same load. Per setup: one closed-loop client's p50/p99 over ``--decisions`` (after 20 that
warm the path; a decision with an error code ends the run); the CPU at rest over
``--idle-s``; then ``--clients`` closed-loop clients for ``--seconds``: decisions/s
(successes only) and every failure counted. Setups alternate over ``--rounds`` (round 1
single, async, sync; round 2 the reverse; ...), so drift on a shared machine hits them alike.

CPU PER DECISION (the method): user + system CPU time (psutil, from /proc) of every process
of the setup over the throughput phase, divided by the decisions it served: each engine's
process tree (supervisor with its lease agent, tailer and control threads, ingress, worker)
and, for the cluster, the three nats-servers. The load generator (this process) is not
counted. ``net of rest`` subtracts the CPU the same processes use at rest (lease renewals,
heartbeats, lease reads, the tailer's idle polls: paid per second, not per decision) over the
phase's wall time; ``rest %cpu`` is that rate in % of one core (on a loaded machine it swings
from one second to the next, and the net figure can come out negative: read it from a quiet
one). The REPLICATION COST PER
DECISION of an ack mode is the 3-node setup's figure minus the single engine's, per round (the
same round's pair), median over the rounds: what the cluster (ownership checks, the tailer's
publishes, the servers' R3 writes and Raft, lease traffic) adds to a decision, gross and net
of rest. Four closed-loop clients do not saturate an engine: a figure per decision includes
the wake-ups of a process waiting for the next request, the same for every setup.

FAILOVER: bench/cluster_failover.py (its DEFINITION is printed with the figures), on the
``ack: sync`` setup of the last round after its measurements: ``--kills`` kills of the nodes
in turn under a light load, each killed node restarted before the next kill. The issue's
target is lease TTL + 1 s.

Two loaded cores carry every engine, server and the clients: the 3-node setups cannot be
faster than one node here; compare CPU per decision, and figures only within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack

from bench.acksync import DEADLINE_MS, PARTITIONS, latency, throughput
from bench.cluster_failover import DEFINITION, failovers
from bench.cluster_nodes import CpuMeter, node_set, wait_balanced
from bench.engine_proc import free_port
from engine.cluster.natsserver import NatsCluster
from ingress.client import Client
from ingress.cluster_client import ClusterClient
from shm.runtime.config import load_config

SETUPS = ("single", "async", "sync")
LABELS = {"single": "1 node alone", "async": "3 nodes async", "sync": "3 nodes sync"}


def run_setup(kind: str, tmp: str, a, failover: bool, out) -> dict:
    """One setup's figures (module doc); with ``failover`` also the kills' (ack sync)."""
    with ExitStack() as stack:
        nats = None if kind == "single" else stack.enter_context(NatsCluster(3, port_fn=free_port))
        nodes = stack.enter_context(node_set(tmp, nats, ack=kind))
        if nats is None:
            def connect():
                return Client(nodes[0].endpoint, timeout_ms=20_000, retries=0, deadline_ms=DEADLINE_MS)
            ttl_s = None
        else:
            wait_balanced(nodes)

            def connect():
                return ClusterClient(nats.urls, timeout_ms=20_000, retries=0, deadline_ms=DEADLINE_MS,
                                     credentials=nats.client_credentials)
            ttl_s = load_config(str(nodes[0].config_path)).cluster.lease_ttl_s
        meter = CpuMeter(nodes, nats)
        p50, p99 = latency(connect, a.decisions)
        before = meter.read()                   # at rest: after the latency phase warmed the path
        time.sleep(a.idle_s)
        rest_s = sum(meter.delta(before)) / a.idle_s        # CPU seconds per second
        before, t0 = meter.read(), time.perf_counter()
        ok, failed = throughput(connect, a.seconds, a.clients)
        eng_s, nats_s = meter.delta(before)
        busy_s, n = time.perf_counter() - t0, max(ok, 1)
        res = {"kind": kind, "p50_ms": p50, "p99_ms": p99, "rate": ok / a.seconds, "failed": failed,
               "cpu_us": (eng_s + nats_s) / n * 1e6, "eng_us": eng_s / n * 1e6, "nats_us": nats_s / n * 1e6,
               "net_us": (eng_s + nats_s - rest_s * busy_s) / n * 1e6, "rest_pct": rest_s * 100,
               "ttl_s": ttl_s}
        if failover:
            res["failover"] = failovers(nodes, nats, a.kills, out)
    return res


COLS = (("p50 ms", 8, "{:.2f}"), ("p99 ms", 8, "{:.2f}"), ("decisions/s", 12, "{:,.0f}"), ("failed", 7, "{}"),
        ("CPU us/dec", 11, "{:.1f}"), ("engines", 9, "{:.1f}"), ("nats", 9, "{:.1f}"),
        ("net of rest", 12, "{:.1f}"), ("rest %cpu", 10, "{:.1f}"))
HEAD = f"{'setup':<15}{'round':>6}" + "".join(f" {name:>{w}}" for name, w, _ in COLS)


def row(r: dict, rnd: str) -> str:
    vals = (r["p50_ms"], r["p99_ms"], r["rate"], len(r["failed"]), r["cpu_us"], r["eng_us"], r["nats_us"],
            r["net_us"], r["rest_pct"])
    return f"{LABELS[r['kind']]:<15}{rnd:>6}" + "".join(f" {fmt.format(v):>{w}}" for (_, w, fmt), v in zip(COLS, vals))


def summary(results: list[dict], rounds: int, out) -> None:
    by = {k: [r for r in results if r["kind"] == k] for k in SETUPS}
    out("median over the rounds:")
    for k in SETUPS:
        rs = by[k]
        med = {f: statistics.median(r[f] for r in rs) for f in
               ("p50_ms", "p99_ms", "rate", "cpu_us", "eng_us", "nats_us", "net_us", "rest_pct")}
        out(row({**med, "kind": k, "failed": [x for r in rs for x in r["failed"]]}, "all"))
    costs = []
    for k in ("async", "sync"):
        def med(f, base=True):
            return statistics.median(c[f] - (s[f] if base else 0.0) for c, s in zip(by[k], by["single"]))
        costs.append(f"ack {k} {med('cpu_us'):+.1f} us (engines {med('eng_us'):+.1f}, nats-servers "
                     f"{med('nats_us', False):+.1f}; net of rest {med('net_us'):+.1f})")
    out(f"replication cost per decision (CPU us per decision of the 3 nodes' process trees and the "
        f"3 nats-servers, minus the single engine's; median of {rounds} round(s)): " + "; ".join(costs))
    for r in results:
        if r["failed"]:
            kinds = statistics.multimode(r["failed"])[:3]
            out(f"{LABELS[r['kind']]}: {len(r['failed'])} failed, most often: {'; '.join(kinds)}")


def print_failover(r: dict, kills: int, out) -> None:
    f, ttl = r["failover"], r["ttl_s"]
    target = ttl + 1.0
    t = f["times"]
    within = sum(x <= target for x in t)
    out(f"failover (3 nodes sync, lease_ttl_s {ttl:g} s; target TTL + 1 s = {target:g} s): {kills} kills: "
        f"min {min(t):.2f} s, median {f['median']:.2f} s, max {max(t):.2f} s; {within} of {kills} within "
        f"the target; first partition served again: median {statistics.median(f['firsts']):.2f} s")
    out(f"light load during the kills: {f['load_ok']:,} decisions, {len(f['load_failed'])} failed"
        + (f" ({'; '.join(statistics.multimode(f['load_failed'])[:3])})" if f["load_failed"] else ""))
    out(DEFINITION)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=500, help="one client's decisions for p50/p99 (default 500)")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput phase per setup (default 5)")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop clients of the throughput phase (default 4)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three setups (default 2)")
    ap.add_argument("--kills", type=int, default=10, help="failover: kill -9 count (default 10)")
    ap.add_argument("--idle-s", type=float, default=2.0, help="CPU at rest measured over this (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --decisions 100 --seconds 2 --rounds 1 --kills 2 --idle-s 1")
    a = ap.parse_args(argv)
    if a.quick:
        a.decisions, a.seconds, a.rounds, a.kills, a.idle_s = 100, 2.0, 1, 2, 1.0
    if a.decisions < 1 or a.seconds <= 0 or a.clients < 1 or a.rounds < 1 or a.kills < 1 or a.idle_s <= 0:
        ap.error("--decisions, --clients, --rounds, --kills >= 1; --seconds, --idle-s > 0")

    def out(line: str) -> None:
        print(line, flush=True)
    out(f"bench.cluster {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average "
        f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} cpus: 1 worker per engine, {PARTITIONS} partitions; "
        f"3 nats-servers on loopback (R3) per 3-node setup; {a.decisions} decisions by 1 client, then "
        f"{a.clients} clients for {a.seconds:g} s; {a.rounds} round(s)")
    out(HEAD)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for r in range(a.rounds):
            for kind in (SETUPS if r % 2 == 0 else SETUPS[::-1]):
                res = run_setup(kind, tmp, a, failover=kind == "sync" and r == a.rounds - 1, out=out)
                results.append(res)
                out(row(res, str(r + 1)))
    summary(results, a.rounds, out)
    print_failover(next(r for r in results if "failover" in r), a.kills, out)
    out(f"end {time.strftime('%H:%M:%S UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
