"""A journal tailer as a process, for kill -9 tests: ``python -m tests.cluster.tailerproc``
owns every partition at one revision, fences them, prints ``fenced`` and then, after every
step, ``published N`` (its running total), until it is killed."""
from __future__ import annotations

import argparse
import asyncio

import nats

from engine.cluster.ownership import OwnershipTable, now_ns
from engine.cluster.replog import ReplicationLog
from engine.cluster.tailer import JournalTailer
from shm.schema import Schema

SCHEMA = Schema.build({"account_id": "u64", "amount": "f64"}, "account_id")


async def main(a) -> None:
    nc = await nats.connect(a.servers.split(","), connect_timeout=2, max_reconnect_attempts=-1)
    table = OwnershipTable(a.partitions)
    for p in range(a.partitions):
        table.begin(p, a.rev, now_ns() + 3600 * 10**9)
    log = ReplicationLog(nc.jetstream(timeout=5.0), a.node, SCHEMA.dtype, "account_id", a.partitions,
                         stream=a.stream, prefix=a.prefix)
    t = JournalTailer(log, a.dir, SCHEMA.dtype, SCHEMA.hash, table, batch_records=40, records_per_msg=8)
    await t.take_ownership()
    print("fenced", flush=True)
    for _ in range(1_000_000):                     # bounded; the test kills it long before
        await t.step()
        print(f"published {log.counters.published_records}", flush=True)
        if not t.read_last_step:
            await asyncio.sleep(0.01)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for k in ("servers", "stream", "prefix", "dir", "node"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--rev", type=int, required=True)
    asyncio.run(main(ap.parse_args()))
