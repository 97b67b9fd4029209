"""Opening what the cluster keeps in JetStream while the servers are not settled: the lease
bucket, the journal stream and an object store are opened or created while the meta leader
does not answer, once another is elected (engine.cluster.jsopen); and a watch of the lease bucket counts as
read only once every current lease has arrived (ingress.partmap.caught_up), for the client's
partition map and the lease agent's view alike."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
import uuid

import nats
import pytest
from nats.js import api

from engine.cluster.jsopen import open_object_store
from engine.cluster.leases import LeaseStore
from engine.cluster.leaseview import LeaseView
from engine.cluster.replog import ReplicationLog
from nats.js.kv import KeyValue

from ingress.partmap import PartitionMap, caught_up, encode, lease_key
from shm.runtime.nats_auth import auth_options
from tests.cluster.test_nats_auth import wait_put
from tests.cluster.tailerproc import SCHEMA

PARTITIONS = 64


def run(cluster, body, urls=None, timeout_s=180):
    async def go():
        nc = await nats.connect(urls or cluster.urls, **auth_options(cluster.credentials),
                                connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            return await body(nc.jetstream(timeout=5.0))
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(go(), timeout_s))


def test_a_watch_is_caught_up_at_the_last_value_it_began_behind_not_at_the_marker():
    """nats-py's None marker can come before the values (its own consumer-info race); an entry
    with more pending, or one older than the stream's last sequence when the watch began, does
    not complete them either."""
    def entry(revision, delta):
        return KeyValue.Entry(bucket="b", key="p.0", value=b"{}", revision=revision, delta=delta,
                              created=None, operation=None)
    assert not caught_up(None, 0) and not caught_up(None, 7)
    assert not caught_up(entry(5, 2), 7) and not caught_up(entry(6, 0), 7)
    assert caught_up(entry(7, 0), 7) and caught_up(entry(9, 0), 7)


@pytest.fixture(scope="module")
def leases(nats3):
    """A lease bucket holding PARTITIONS leases and its meta entry, written once."""
    bucket = "m" + uuid.uuid4().hex[:10]

    async def body(js):
        kv = await js.create_key_value(api.KeyValueConfig(bucket=bucket, history=1, replicas=3))
        await wait_put(kv, "meta", b'{"partitions": %d}' % PARTITIONS)
        for p in range(PARTITIONS):
            await kv.put(lease_key(p), encode(f"n{p % 3}", f"tcp://127.0.0.1:{7000 + p}", True))
    run(nats3, body)
    return bucket


def test_the_partition_map_holds_every_lease_when_start_returns(nats3, leases):
    """Started through each server in turn (the stream's leader and the others), several times
    each, the map returned by start() names every partition's owner."""
    for url in nats3.urls * 4:
        m = PartitionMap([url], bucket=leases, credentials=nats3.credentials, timeout_s=20).start()
        try:
            assert m.partitions == PARTITIONS
            assert m.owners() == {p: f"tcp://127.0.0.1:{7000 + p}" for p in range(PARTITIONS)}
        finally:
            m.close()


def test_the_lease_view_is_synced_only_once_it_holds_every_lease(nats3, leases):
    """The lease agent's view: once it says synced, it knows every partition's lease (a lease
    it has not seen would read free at revision 0, and the agent would try to take it)."""
    for url in nats3.urls * 4:
        async def body(js):
            view, stop = LeaseView(PARTITIONS, ttl_ns=2_000_000_000), asyncio.Event()
            task = asyncio.create_task(view.follow(js, leases, stop))
            try:
                for _ in range(600):                    # bounded: 60 s
                    if view.synced:
                        break
                    await asyncio.sleep(0.1)
                assert view.synced
                held = {p: view.entry(p).value for p in range(PARTITIONS)}
            finally:
                stop.set()
                await task
            assert all(v is not None and v["advertise"] == f"tcp://127.0.0.1:{7000 + p}"
                       for p, v in held.items()), held
        run(nats3, body, urls=[url])


def test_the_journal_stream_and_a_store_are_opened_while_the_meta_leader_is_stopped(nats3):
    """The meta leader is stopped (SIGSTOP) and, through the other two servers, the lease
    bucket, the journal stream and an object store are created: their first requests go
    unanswered until the two elect a new leader, and each open waits for that (bounded)
    instead of failing the node's start (the lease bucket's open raised the first timeout
    before it went through jsopen.opened). The stopped server is resumed afterwards."""
    leader = json.load(urllib.request.urlopen(
        f"http://127.0.0.1:{nats3.servers[0].http_port}/jsz", timeout=5))["meta_cluster"]["leader"]
    k = next(i for i, s in enumerate(nats3.servers) if s.name == leader)
    h = uuid.uuid4().hex[:10]

    async def body(js):
        os.kill(nats3.servers[k].proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            assert await LeaseStore(js, f"lb{h}", timeout_s=5.0).open(4, replicas=3) == 4
            t1 = time.monotonic()
            log = ReplicationLog(js, "a", SCHEMA.dtype, "account_id", 4, stream=f"RJ{h}", prefix=f"rj{h}")
            await log.ensure_stream(3, ready_s=60)
            t2 = time.monotonic()
            store = await open_object_store(js, f"os{h}", 3, "test", 60.0)
            print(f"meta leader {leader} stopped: lease bucket opened after {t1 - t0:.1f} s, journal "
                  f"stream after {t2 - t0:.1f} s, object store after {time.monotonic() - t0:.1f} s")
            await store.put("first", b"x")      # used while the old leader is still stopped
            return (await js.stream_info(f"RJ{h}")).config.num_replicas
        finally:   # (resumed, it makes JetStream 'temporarily unavailable' for a moment)
            os.kill(nats3.servers[k].proc.pid, signal.SIGCONT)
    assert run(nats3, body, urls=[s.url for i, s in enumerate(nats3.servers) if i != k]) == 3
