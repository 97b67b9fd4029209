"""Fixtures for the cluster tests: a module-scoped 3-server NATS JetStream cluster on loopback
(R3 buckets), a lease bucket per test, and lease agent processes (tests/cluster/agentproc.py)."""
from __future__ import annotations

import uuid

import pytest

from bench.engine_proc import free_port
from engine.cluster.natsserver import NatsCluster
from tests.cluster.agentproc import AgentProc


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
