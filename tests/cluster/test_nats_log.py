"""A connection cut off from NATS says so in one line per state change (shm.runtime.nats_log),
not with nats-py's traceback per reconnect attempt (one every 0.25 s before, per connection
of a node: the partition map's and the replication's had no error callback)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from bench.engine_proc import free_port
from engine.cluster.leases import LeaseStore, connect_once
from engine.cluster.natsserver import NatsCluster
from ingress.partmap import PartitionMap
from shm.runtime.nats_log import ConnectionLog
from tests.cluster.agentproc import wait_for


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(coro)


def test_one_line_per_state_change_and_repeats_rate_limited():
    clock, lines = Clock(), []
    log = ConnectionLog("node x", lines.append, every_s=30, clock=clock)

    async def outage(attempts: int, step_s: float):
        await log.disconnected()
        for _ in range(attempts):
            clock.t += step_s
            await log.error(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4222)"))
        await log.disconnected()                    # said again by nats-py: not a new line
        await log.reconnected()
    run(outage(40, 0.25))                           # 10 s down: two lines
    assert lines == ["node x: disconnected from NATS; reconnecting",
                     "node x: reconnected to NATS after 10.0 s (40 attempt(s) failed)"]
    lines.clear()
    clock.t += 60
    run(outage(400, 0.25))                          # 100 s down: a reminder every 30 s
    assert lines[0] == "node x: disconnected from NATS; reconnecting"
    still = lines[1:-1]
    assert len(still) == 3 and all(s.startswith("node x: still disconnected from NATS after ") for s in still)
    assert still[0] == ("node x: still disconnected from NATS after 30 s: 120 attempt(s) failed, the last: "
                        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 4222)")
    assert lines[-1] == "node x: reconnected to NATS after 100.0 s (400 attempt(s) failed)"
    lines.clear()
    # flapping: a disconnected line at most once per 30 s (with its reconnected line), the
    # disconnections in between counted
    for _ in range(5):
        clock.t += 1
        run(outage(1, 0.25))
    assert lines == ["node x: disconnected from NATS; reconnecting",
                     "node x: reconnected to NATS after 0.2 s (1 attempt(s) failed)"]
    clock.t += 60
    run(log.error(ConnectionResetError(104, "Connection reset by peer")))   # said with its end
    run(outage(1, 0.25))
    assert lines[2:] == ["node x: disconnected from NATS (ConnectionResetError: [Errno 104] Connection reset "
                         "by peer); reconnecting (4 more disconnection(s) since the last such line)",
                         "node x: reconnected to NATS after 0.2 s (1 attempt(s) failed)"]
    lines.clear()
    # errors while connected: one line, the next a period later naming those not printed
    for _ in range(10):
        run(log.error(RuntimeError("nats: slow consumer,\n  messages dropped")))
    clock.t += 31
    run(log.error(RuntimeError("permissions violation")))
    assert lines == ["node x: NATS error: RuntimeError: nats: slow consumer, messages dropped",
                     "node x: NATS error: RuntimeError: permissions violation (9 more not printed since the last)"]
    assert log.errors == 40 + 400 + 5 + 2 + 11
    with pytest.raises(ValueError):
        ConnectionLog("x", every_s=0)


def test_a_partition_map_cut_off_from_its_server_logs_no_traceback(caplog):
    """A real server killed under a PartitionMap, then restarted: the map says
    disconnected and reconnected, one line each; nats-py logs nothing (its default error
    callback logged each failed attempt with a traceback)."""
    cluster = NatsCluster(1, port_fn=free_port).start()
    lines: list[str] = []
    try:
        async def make_bucket():
            nc = await connect_once(cluster.urls, cluster.credentials)
            try:
                await LeaseStore(nc.jetstream(timeout=5.0), "nlog", 5.0).open(4, 1)
            finally:
                await nc.close()
        run(asyncio.wait_for(make_bucket(), 60))
        caplog.set_level(logging.DEBUG)
        m = PartitionMap(cluster.urls, "nlog", credentials=cluster.credentials, log=lines.append,
                         timeout_s=30).start()
        try:
            cluster.kill(0)
            wait_for(lambda: m.conn_log.failed >= 4, 60, "several reconnect attempts failed")
            cluster.restart(0)
            wait_for(lambda: m.conn_log.down_since is None, 60, "the map reconnected")
        finally:
            m.close()
    finally:
        cluster.close()
    assert len(lines) == 2, lines
    assert lines[0] == ("risk-engine: partition map: disconnected from NATS (UnexpectedEOF: nats: "
                        "unexpected EOF); reconnecting")
    assert lines[1].startswith("risk-engine: partition map: reconnected to NATS after "), lines
    nats_records = [r for r in caplog.records if r.name.startswith("nats")]
    assert not [r for r in nats_records if r.exc_info], [r.getMessage() for r in nats_records]
