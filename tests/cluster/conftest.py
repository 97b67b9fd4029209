"""Fixtures for the cluster tests: a module-scoped 3-server NATS JetStream cluster on loopback
(R3 buckets), a lease bucket per test, lease agent processes (tests/cluster/agentproc.py), and
one nats-server with an empty lease bucket for tests of the cluster client against stand-in
nodes."""
from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from bench.engine_proc import free_port
from engine.cluster.leases import LeaseStore
from engine.cluster.natsserver import NatsCluster
from shm.runtime.nats_auth import auth_options
from tests.cluster.agentproc import AgentProc

LEASE_BUCKET_PARTITIONS = 4


@pytest.fixture(scope="module")
def nats3():
    """Three clustered nats-servers with JetStream; stopped and removed after the module."""
    c = NatsCluster(3, port_fn=free_port).start()
    try:
        yield c
    finally:
        c.close()
    assert not any(s.alive() for s in c.servers)
    assert not c.run_dir.exists()


@pytest.fixture
def names():
    """A stream, subject prefix and snapshot bucket of its own per test (test_replication's
    own fixture gives the first two)."""
    h = uuid.uuid4().hex[:10]
    return f"RJ{h}", f"rj{h}", f"snap{h}"


@pytest.fixture
def bucket():
    """A lease bucket of its own per test, on the module's cluster."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def agents(nats3, bucket, tmp_path):
    """start(node, partitions, ttl_s) -> AgentProc; every agent is stopped afterwards."""
    started: list[AgentProc] = []

    def start(node: str, partitions: int = 12, ttl_s: float = 2.0) -> AgentProc:
        a = AgentProc(tmp_path, nats3, node, bucket, partitions, ttl_s)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


@pytest.fixture(scope="module")
def lease_bucket():
    """(one nats-server, the name of its lease bucket of LEASE_BUCKET_PARTITIONS partitions
    and no owner): a cluster client's map reads it; the test routes partitions itself."""
    bucket = "t" + uuid.uuid4().hex[:10]
    c = NatsCluster(1, port_fn=free_port, read_buckets=(bucket,)).start()   # the client user reads it

    async def create():
        nc = await nats.connect(c.urls, **auth_options(c.credentials))
        try:
            await LeaseStore(nc.jetstream(), bucket).open(LEASE_BUCKET_PARTITIONS)
        finally:
            await nc.close()
    try:
        asyncio.run(create())
        yield c, bucket
    finally:
        c.close()
