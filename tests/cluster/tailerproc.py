"""A journal tailer as a process, for kill -9 tests: ``python -m tests.cluster.tailerproc``
owns every partition at one revision, fences them, prints ``fenced`` and then, after every
step, ``published N`` (its running total), until it is killed. With ``--snapshots BUCKET``
it also writes each partition's State (below) as a snapshot object every few steps, from
what it published (prints ``snapshot N`` after each round)."""
from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from contextlib import contextmanager

import nats
import numpy as np

from engine.cluster.ownership import OwnershipTable, now_ns
from engine.cluster.replog import ReplicationLog
from engine.cluster.snapstore import SnapshotObjects
from engine.cluster.tailer import JournalTailer
from shm.runtime.nats_auth import auth_options
from shm.schema import Schema

SCHEMA = Schema.build({"account_id": "u64", "amount": "f64"}, "account_id")
SNAPSHOT_EVERY_STEPS = 5


class State:
    """A partition's feature state for the tests: per account, the event count and the sum of
    arrival_ns (exact integers), as arrays for a snapshot."""

    def __init__(self):
        self.f: dict[int, tuple[int, int]] = {}

    def restore(self, arrays):
        self.f = {} if arrays is None else {
            int(k): (int(c), int(s)) for k, c, s in zip(arrays["key"], arrays["count"], arrays["sum_ns"])}

    def apply(self, records):
        for k, t in zip(records["event"]["account_id"].tolist(), records["arrival_ns"].tolist()):
            c, s = self.f.get(k, (0, 0))
            self.f[k] = (c + 1, s + t)

    def arrays(self):
        keys = sorted(self.f)
        return {"key": np.array(keys, np.uint64),
                "count": np.array([self.f[k][0] for k in keys], np.int64),
                "sum_ns": np.array([self.f[k][1] for k in keys], np.int64)}


async def published_state(log, p, upto):
    """p's State from the stream's records up to stream sequence ``upto``."""
    s = State()
    async for m in log.replay(p, end_seq=upto):
        if m.kind == "rec":
            s.apply(m.records)
    return s


async def main(a) -> None:
    nc = await nats.connect(a.servers.split(","), **auth_options(a.credentials), connect_timeout=2,
                            max_reconnect_attempts=-1)
    table = OwnershipTable(a.partitions)
    for p in range(a.partitions):
        table.begin(p, a.rev, now_ns() + 3600 * 10**9)
    log = ReplicationLog(nc.jetstream(timeout=5.0), a.node, SCHEMA.dtype, "account_id", a.partitions,
                         stream=a.stream, prefix=a.prefix)
    t = JournalTailer(log, a.dir, SCHEMA.dtype, SCHEMA.hash, table, batch_records=40, records_per_msg=8)
    snaps = None
    if a.snapshots:
        snaps = SnapshotObjects(nc.jetstream(timeout=5.0), log, SCHEMA.hash, bucket=a.snapshots)
        await snaps.open(3)
    await t.take_ownership()
    print("fenced", flush=True)
    for i in range(1_000_000):                     # bounded; the test kills it long before
        await t.step()
        print(f"published {log.counters.published_records}", flush=True)
        if snaps is not None and i % SNAPSHOT_EVERY_STEPS == SNAPSHOT_EVERY_STEPS - 1:
            for p in range(a.partitions):
                await snaps.put(p, log.last[p], (await published_state(log, p, log.last[p])).arrays())
            print(f"snapshot {snaps.counters.written}", flush=True)
        if not t.read_last_step:
            await asyncio.sleep(0.01)


@contextmanager
def running(out, cluster, stream, prefix, journal_dir, partitions, rev, extra=()):
    """A tailer process (node "a") writing its lines to ``out``, fenced when this yields it;
    killed if still running afterwards."""
    from tests.cluster.agentproc import REPO, wait_for     # lazy: the process itself needs neither
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.tailerproc", "--servers",
                                 ",".join(cluster.urls), "--credentials", cluster.credentials, "--stream", stream, "--prefix", prefix,
                                 "--dir", str(journal_dir), "--node", "a", "--partitions",
                                 str(partitions), "--rev", str(rev), *extra],
                                cwd=REPO, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "fenced" in out.read_text() or proc.poll() is not None, 60, "the tailer's fences")
        assert proc.poll() is None, out.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def kill9(proc, out) -> None:
    assert proc.poll() is None, out.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for k in ("servers", "credentials", "stream", "prefix", "dir", "node"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--rev", type=int, required=True)
    ap.add_argument("--snapshots", default="")
    asyncio.run(main(ap.parse_args()))
