"""A publishing node's replication, as `serve` runs it (engine.cluster.replicate.Replicator on
the module's 3-server cluster, its leases in the lease bucket): `risk-engine cluster status`
shows per partition the records the owner journaled but has not published yet and the
oldest one's age (engine.cluster.lag), the node's metrics the same, back to 0 once the
tailer caught up; and the snapshot objects it writes trim each subject below them
(engine.cluster.trim), so the stream does not grow without bound."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np

from engine.cluster.leases import BUCKET, LeaseStore, encode
from engine.cluster.node_hooks import _replication
from engine.cluster.partition import partition_of_keys
from engine.cluster.replicate import Replicator
from engine.cluster.replog import subject
from engine.journal import JournalReader
from tests.cluster.agentproc import REPO
from tests.cluster.tailerproc import SCHEMA
from tests.cluster.test_partstate import node, ruleset, wait, write  # noqa: F401  (ruleset: a fixture)
from tests.cluster.test_replication import P, journal, owning_all, run


def status(cluster) -> dict:
    out = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                          ",".join(cluster.urls), "--credentials", cluster.credentials, "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def lag_rows(st) -> dict:
    return {r["partition"]: r.get("lag") and r["lag"]["records"] for r in st["leases"]}


async def first_seq(js, p) -> int:
    """Stream sequence of the first message of partition p's subject."""
    return (await js.get_msg("RISK_ENGINE_JOURNAL", seq=1, next=True, subject=subject("rj", p))).seq


def test_status_and_metrics_show_the_lag_per_partition_and_snapshots_trim_the_stream(nats3, tmp_path, ruleset):
    w0 = journal(tmp_path / "a")
    cfg = SimpleNamespace(cluster=SimpleNamespace(servers=tuple(nats3.urls), credentials=nats3.credentials, node="a", partitions=P),
                          schema=SCHEMA, durability=SimpleNamespace(journal_dir=str(tmp_path / "a"),
                                                                    snapshot_interval_s=0.3))
    a = Replicator(cfg, owning_all(5), print, 30, None, lambda: node(ruleset)[1])
    loop_status = []

    async def body(js):
        leases = LeaseStore(js, BUCKET, timeout_s=5.0)
        await leases.open(P, replicas=3)
        for p in range(P):                   # the bucket names a as every partition's owner
            assert await leases.take(p, encode("a", "tcp://127.0.0.1:1", True), 0)
        stop = asyncio.Event()
        task = asyncio.ensure_future(a.run(stop))
        try:
            await wait(lambda: a.rlog is not None and len(a.rlog.fenced) == P)
            write(w0, range(200), 400, 1, 1_000)
            await wait(lambda: a.rlog.counters.published_records == 400 and
                       all(a.snapped.get(p) == a.rlog.last[p] for p in range(P)))
            trimmed = snapped = {}
            for _ in range(200):             # bounded: the trims follow the objects
                snapped = dict(a.snapped)
                trimmed = {p: await first_seq(js, p) for p in range(P)}
                if trimmed == snapped:
                    break
                await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            async with a._lock:              # the tailer stalls: 100 records wait in the journal
                # arrival stamps 5 s ago on the ingress's clock (CLOCK_MONOTONIC): ages > 0
                write(w0, range(200, 300), 100, 2, time.monotonic_ns() // 10**6 - 5_000)
                recs = JournalReader(str(tmp_path / "a"), SCHEMA.dtype, SCHEMA.hash, 0).read_all()[400:]
                want = np.bincount(partition_of_keys(recs["event"]["account_id"], P), minlength=P)
                want = {p: int(n) for p, n in enumerate(want)}
                for _ in range(30):          # bounded: the figure is written once a second
                    st = await loop.run_in_executor(None, status, nats3)
                    if lag_rows(st) == want:
                        break
                    await asyncio.sleep(0.5)
                loop_status.append(st)
                metrics = {m.name: {s.labels.get("partition"): s.value for s in m.samples}
                           for m in _replication(a)}
            await wait(lambda: a.rlog.counters.published_records == 500)
            for _ in range(30):
                st = await loop.run_in_executor(None, status, nats3)
                if lag_rows(st) == dict.fromkeys(range(P), 0):
                    break
                await asyncio.sleep(0.5)
            loop_status.append(st)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        return want, trimmed, snapped, metrics

    want, trimmed, snapped, metrics = run(nats3, body, timeout_s=240)
    stalled, caught_up = loop_status
    assert trimmed == snapped and a.trims >= P and a.trim_refused == 0, (trimmed, snapped)
    assert sum(want.values()) == 100 and lag_rows(stalled) == want, stalled["leases"]
    for r in stalled["leases"]:
        lag = r["lag"]
        assert lag["age_s"] >= 0 and lag["capped"] is False and lag["as_of_s"] is not None
        assert (lag["age_s"] >= 4) == (lag["records"] > 0), lag
    assert {int(k): int(v) for k, v in metrics["risk_cluster_replication_lag_records"].items()} == want
    assert lag_rows(caught_up) == dict.fromkeys(range(P), 0), caught_up["leases"]
