"""Replication publish cost per journal record on a 3-server NATS JetStream cluster (R3) on
loopback: ``sync`` publishes one record per message and waits for its acknowledgement before
the next (what ``cluster.ack: sync`` pays per decision); ``async-N`` publishes messages of N
records, every partition's chain concurrently, as the journal tailer does (``ack: async``).

    python -m bench.replication [--seconds S] [--rounds R] [--records-per-msg 64,512]
                                [--partitions P] [--config F] [--quick]

Then the first (up to 4) partitions are replayed as failover would
(ReplicationLog.replay: an ordered consumer, every message checked): ``us/record`` of that.
Modes alternate within each round (sync, async..., then reversed), so drift on a shared
machine hits them alike. ``us/record`` is the wall time over the records acknowledged;
``ack p50/p99 ms`` the time from publish to acknowledgement of one message. Every publish goes
through engine.cluster.replog (fencing expectation and headers included), after one fence
per partition. The records are the default schema's journal records with valid check words.
Two loaded cores carry the client and the three servers: compare modes within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import nats
import numpy as np

from bench.engine_proc import free_port
from engine.cluster.natsserver import NatsCluster
from engine.cluster.replog import ReplicationLog
from shm.journal_format import checksum, journal_dtype
from shm.runtime.config import load_config
from shm.runtime.nats_auth import auth_options


def make_records(schema, n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    recs = np.zeros(n, journal_dtype(schema.dtype))
    recs["seq"] = np.arange(1, n + 1)
    recs["arrival_ns"] = time.time_ns()
    recs["event"][schema.shard_key] = rng.integers(0, 2**62, n)
    recs["check"] = checksum(recs)
    return recs


async def run_mode(log: ReplicationLog, recs_by_p: dict, per_msg: int, seconds: float, sync: bool):
    """(records, messages, seconds, ack latencies in s) of one mode for ``seconds``."""
    lat: list[float] = []
    counts = [0, 0]
    stop = time.perf_counter() + seconds

    async def chain(p: int, recs: np.ndarray):
        i, seq = 0, 0
        while time.perf_counter() < stop:
            part = recs[i:i + per_msg]
            if len(part) < per_msg:
                i, part = 0, recs[:per_msg]
            t0 = time.perf_counter()
            seq += len(part)
            if await log.publish(p, 1, 0, part, {0: seq}) is None:
                raise RuntimeError(f"partition={p}: publish refused in the bench")
            lat.append(time.perf_counter() - t0)
            counts[0] += len(part)
            counts[1] += 1
            i += per_msg

    t0 = time.perf_counter()
    if sync:                    # one partition at a time, one record, wait for each ack
        await chain(0, recs_by_p[0])
    else:
        await asyncio.gather(*(chain(p, r) for p, r in recs_by_p.items()))
    return counts[0], counts[1], time.perf_counter() - t0, lat


async def bench(urls, credentials: str, schema, partitions: int, per_msgs: list[int], seconds: float,
                rounds: int):
    nc = await nats.connect(urls, **auth_options(credentials), connect_timeout=2)
    try:
        log = ReplicationLog(nc.jetstream(timeout=5.0), "bench", schema.dtype, schema.shard_key,
                             partitions)
        await log.ensure_stream(min(3, len(urls)))
        recs = make_records(schema, 20_000)
        parts = log.partition_of(recs)
        by_p = {}
        for p in range(partitions):
            rows = recs.view(np.uint8).reshape(len(recs), -1)[parts == p]
            by_p[p] = np.ascontiguousarray(rows).reshape(-1).view(recs.dtype)
            await log.fence(p, 1, {})
        modes = [("sync", 1, True)] + [(f"async-{n}", n, False) for n in per_msgs]
        tot = {m: [0, 0, 0.0, []] for m, _, _ in modes}
        for r in range(rounds):
            for name, n, sync in (modes if r % 2 == 0 else modes[::-1]):
                k, msgs, s, lat = await run_mode(log, by_p, n, seconds, sync)
                t = tot[name]
                t[0] += k; t[1] += msgs; t[2] += s; t[3] += lat
        t0, msgs, nrec = time.perf_counter(), 0, 0
        for p in range(min(partitions, 4)):     # what failover replays, each message checked
            async for m in log.replay(p):
                msgs += 1
                nrec += 0 if m.records is None else len(m.records)
        replay = (nrec, msgs, time.perf_counter() - t0)
        return modes, tot, recs.dtype.itemsize, replay
    finally:
        await nc.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="per mode per round (default 3)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    ap.add_argument("--records-per-msg", default="64,512", help="async batch sizes (default 64,512)")
    ap.add_argument("--partitions", type=int, default=16, help="partitions published concurrently (default 16)")
    ap.add_argument("--config", help="engine config for the schema (default: the bundled one)")
    ap.add_argument("--quick", action="store_true", help="--seconds 0.5 --rounds 2")
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.rounds = 0.5, 2
    per_msgs = [int(x) for x in a.records_per_msg.split(",") if x]
    if a.seconds <= 0 or a.rounds < 1 or a.partitions < 1 or not per_msgs or min(per_msgs) < 1:
        ap.error("--seconds > 0, --rounds >= 1, --partitions >= 1, --records-per-msg >= 1")
    schema = load_config(a.config).schema
    with NatsCluster(3, port_fn=free_port) as c:
        modes, tot, rs, replay = asyncio.run(bench(c.urls, c.credentials, schema, a.partitions, per_msgs, a.seconds, a.rounds))
    print(f"replication publish cost: 3 nats-servers on loopback (R3), record {rs} B, "
          f"{a.partitions} partitions, {a.rounds} rounds x {a.seconds:g} s per mode")
    print(f"{'mode':<12}{'records':>10}{'msgs':>9}{'seconds':>9}{'us/record':>11}"
          f"{'ack p50 ms':>12}{'ack p99 ms':>12}")
    for name, _, _ in modes:
        k, msgs, s, lat = tot[name]
        p50, p99 = (np.percentile(lat, [50, 99]) * 1e3) if lat else (0.0, 0.0)
        print(f"{name:<12}{k:>10,}{msgs:>9,}{s:>9.2f}{s / max(k, 1) * 1e6:>11.1f}{p50:>12.2f}{p99:>12.2f}")
    k, msgs, s = replay
    print(f"replay (ordered consumer, every message checked), {min(a.partitions, 4)} partitions: {k:,} records "
          f"in {msgs:,} messages, {s:.2f} s, {s / max(k, 1) * 1e6:.2f} us/record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
