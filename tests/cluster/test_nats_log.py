"""A connection cut off from NATS says so in one line per state change (shm.runtime.nats_log),
not with nats-py's traceback per reconnect attempt (one every 0.25 s before, per connection
of a node: the partition map's and the replication's had no error callback), and not with
nothing (the control plane's and the lease agent's only counted their errors)."""
from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from bench.engine_proc import EngineProcess, free_port
from engine.cluster.agent import LeaseAgent
from engine.cluster.agentthread import AgentThread
from engine.cluster.control import ControlClient
from engine.cluster.natsserver import NatsCluster
from ingress.partmap import PartitionMap
from shm.runtime.nats_log import ConnectionLog
from tests.cluster.agentproc import wait_for
from tests.cluster.test_node import admin, cluster_overrides, owned_account, serving

# a node's NATS connections, by the name its lines start with
CONNECTIONS = ("risk-engine: cluster: control plane", "risk-engine: cluster: lease agent",
               "risk-engine: cluster: replication", "risk-engine: partition map")


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
    clock.t += 60                                   # the owner closes it: no outage to tell
    log.closing()
    run(log.disconnected())
    assert len(lines) == 2 and log.down_since is None, lines
    with pytest.raises(ValueError):
        ConnectionLog("x", every_s=0)


def test_each_connection_says_lost_and_back_once_and_nothing_when_its_owner_closes_it(caplog):
    """A real server killed under a node's control client, lease agent and partition map,
    then restarted: each connection says disconnected and reconnected, one line each;
    nats-py logs nothing (its default error callback logged each failed attempt with a
    traceback); closing them afterwards says nothing (nats-py reports a close as a
    disconnection: the map said "disconnected ... reconnecting" on every stop)."""
    cluster = NatsCluster(1, port_fn=free_port).start()
    lines: list[str] = []
    owners = []
    try:
        caplog.set_level(logging.DEBUG)
        control = ControlClient(cluster.urls, "nlog", 1, 30.0, bucket="nlogctl", credentials=cluster.credentials,
                                log=lines.append).start()
        owners.append((control.conn_log, control.close))
        started = threading.Event()             # the agent's bucket is open (the map reads it)
        agent = AgentThread(LeaseAgent(cluster.urls, "nlog", "tcp://127.0.0.1:1", 4, 2.0, bucket="nlog",
                                       credentials=cluster.credentials, log=lines.append,
                                       on_event=lambda ev: ev["ev"] == "started" and started.set())).start()
        owners.append((agent.agent.conn_log, agent.stop))
        wait_for(lambda: started.is_set() or agent.error is not None, 60, "the agent opened its bucket")
        assert agent.error is None, agent.error
        m = PartitionMap(cluster.urls, "nlog", credentials=cluster.credentials, log=lines.append,
                         timeout_s=30).start()
        owners.append((m.conn_log, m.close))
        logs = [log for log, _ in owners]
        cluster.kill(0)
        wait_for(lambda: all(log.failed >= 4 for log in logs), 60, "several reconnect attempts failed")
        cluster.restart(0)
        wait_for(lambda: all(log.down_since is None for log in logs), 60, "every connection is back")
    finally:
        for _, close in reversed(owners):
            close()
        cluster.close()
    assert agent.error is None, agent.error
    for name in CONNECTIONS[:2] + CONNECTIONS[3:]:
        said = [ln for ln in lines if ln.startswith(name + ":")]
        assert len(said) == 2, (name, lines)
        assert said[0] == f"{name}: disconnected from NATS (UnexpectedEOF: nats: unexpected EOF); reconnecting"
        assert said[1].startswith(f"{name}: reconnected to NATS after "), said
    assert len(lines) == 6, lines
    nats_records = [r for r in caplog.records if r.name.startswith("nats")]
    assert not [r for r in nats_records if r.exc_info], [r.getMessage() for r in nats_records]


def said(out: str, name: str, what: str) -> list[str]:
    """The lines of ``out`` in which connection ``name`` says ``what`` ("disconnected from
    NATS", "reconnected to NATS")."""
    return [ln for ln in out.splitlines() if ln.startswith(f"{name}: {what}")]


@pytest.mark.slow
@pytest.mark.timeout(1200)                       # a cold start compiles the rules
def test_a_serve_node_says_once_per_connection_that_nats_went_and_once_that_it_came_back(tmp_path):
    """`risk-engine serve` with a cluster: section on one nats-server, the server killed and
    restarted: the node's output has one disconnected and one reconnected line for each of
    its four NATS connections, and no nats-py error. On the previous code the control
    plane's and the lease agent's connections said nothing."""
    cluster = NatsCluster(1, port_fn=free_port).start()
    try:
        eng = EngineProcess(tmp_path, workers=1, overrides=cluster_overrides(cluster, "nlog"))
        with serving([eng]):
            owned_account(eng)                   # it holds a partition: every connection is up
            cluster.kill(0)
            wait_for(lambda: all(said(eng.output(), c, "disconnected from NATS") for c in CONNECTIONS), 120,
                     "each connection says it lost NATS")
            # down past its leases' deadline (TTL - TTL/4): reconnect attempts fail meanwhile
            wait_for(lambda: not admin(eng, cmd="cluster")["cluster"]["owned"], 120,
                     "the node serves no partition while NATS is gone")
            cluster.restart(0)
            wait_for(lambda: all(said(eng.output(), c, "reconnected to NATS") for c in CONNECTIONS), 120,
                     "each connection says it is back")
            owned_account(eng)                   # it serves again
        out = eng.output()                       # its stop included: a close says nothing
    finally:
        cluster.close()
    for c in CONNECTIONS:
        down, up = said(out, c, "disconnected from NATS"), said(out, c, "reconnected to NATS")
        assert len(down) == 1 and len(up) == 1, (c, down, up)
    assert "nats: encountered error" not in out and "Traceback" not in out, out
