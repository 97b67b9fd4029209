"""A node whose journal is unavailable (a full or failing disk) hands its partitions over and
takes none until its journal works again (engine.cluster.drain, docs/CLUSTER.md "Failures"):
lease agents on threads of this process, the node's journal state a switch the test turns
(what a `serve` node reads from its workers' journal_unavailable cells:
tests/cluster/test_faults_node.py has the real full disk). Real NATS servers (the module's
three), real leases.

Allowed: any order of hand-over, any number of balancing moves before the switch. Not
allowed: a release before the hand-over wait (JOURNAL_HANDOVER_TTLS lease TTLs, at least a
member period), a second release before the first partition is served by the other node, a
take by the node while its journal is unavailable, the node taking nothing once it works."""
from __future__ import annotations

import asyncio
import json
import threading
import time

from engine.cluster.agent import LeaseAgent
from engine.cluster.agentthread import AgentThread
from engine.cluster.drain import JOURNAL_HANDOVER_TTLS
from engine.cluster.leases import LeaseStore, connect_once, journal_unavailable
from tests.cluster.agentproc import wait_for
from tests.cluster.test_cmd_cluster import drain, held_status, slow_prepare

P = 8
TTL_S = 1.0


def test_a_node_without_a_journal_hands_its_partitions_over_and_takes_them_again_once_it_works(nats3, bucket):
    events: list[dict] = []
    broken = threading.Event()                      # j0's journal unavailable while set
    threads = [AgentThread(LeaseAgent(nats3.urls, f"j{i}", f"tcp://127.0.0.1:{7300 + i}", P, TTL_S,
                                      bucket=bucket, credentials=nats3.credentials, replicas=3,
                                      on_event=events.append, prepare=slow_prepare,
                                      journal_ok=(lambda: not broken.is_set()) if i == 0 else None)).start()
               for i in range(2)]
    j0, j1 = (t.agent for t in threads)
    try:
        wait_for(lambda: len(j0.table.owned()) == P // 2 and len(j1.table.owned()) == P // 2, 40,
                 "both agents hold their share")
        broken.set()
        wait_for(lambda: len(j1.table.owned()) == P and not j0.table.owned(), 60,
                 "j1 holds every partition, j0 none")
        down = next(e for e in events if e["ev"] == "journal_unavailable")
        assert down["node"] == "j0" and len(down["held"]) == P // 2
        rel = [e for e in events if e["ev"] == "released" and e["node"] == "j0"
               and e["t_ns"] > down["t_ns"]]
        assert {e["p"] for e in rel} == set(down["held"]) and all(e["ok"] for e in rel), rel
        assert all(e["why"] == "journal unavailable" for e in rel), rel
        # not before the wait: a short failure moves nothing
        assert down["handover_ns"] >= JOURNAL_HANDOVER_TTLS * TTL_S * 1e9
        assert rel[0]["t_ns"] - down["t_ns"] >= down["handover_ns"], (rel[0], down)
        # one at a time: each release after j1's take-over of the previous one returned
        for a, b in zip(rel, rel[1:]):
            assert any(e["ev"] == "ready" and e["p"] == a["p"] and e["node"] == "j1"
                       and a["t_ns"] < e["t_ns"] < b["t_ns"] for e in events), (a, b)
        # the others read it from j0's heartbeat; `cluster status` names it; a drain of j1
        # is refused: nobody whose journal works could take its partitions
        st = json.loads(held_status(nats3, bucket, "--json").stdout)
        assert st["journal_unavailable"] == ["j0"] and st["drained"] == []
        out = drain(nats3, bucket, "drain", "j1")
        assert out.returncode == 2 and "journal unavailable: j0" in out.stderr, out.stderr
        time.sleep(4 * TTL_S)                           # several balancing rounds of j1
        assert not j0.table.owned() and len(j1.table.owned()) == P
        moved = [e for e in events if e["ev"] in ("acquired", "released") and e["t_ns"] > rel[-1]["t_ns"]
                 and not (e["ev"] == "acquired" and e["node"] == "j1" and e["p"] == rel[-1]["p"])]
        assert moved == [], "a partition moved while j0's journal was unavailable"
        broken.clear()
        wait_for(lambda: len(j0.table.owned()) == P // 2 and len(j1.table.owned()) == P // 2, 60,
                 "j0 takes its share again")
        up = next(e for e in events if e["ev"] == "journal_available")
        assert up["node"] == "j0" and up["t_ns"] > rel[-1]["t_ns"]
        assert not journal_unavailable(heartbeat(nats3, bucket, "j0"))
    finally:
        for t in threads:
            assert t.stop(10)
    for t in threads:
        assert t.error is None


def heartbeat(cluster, bucket, node) -> bytes:
    async def read():
        nc = await connect_once(cluster.urls, cluster.credentials)
        try:
            return (await LeaseStore(nc.jetstream(timeout=5.0), bucket, 5.0).get(f"node.{node}")).value
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(read(), 30))


def test_a_lone_node_without_a_journal_keeps_its_leases(nats3, bucket):
    """Nobody could take them: released, its partitions would be served by no one."""
    events: list[dict] = []
    broken = threading.Event()
    t = AgentThread(LeaseAgent(nats3.urls, "solo", "tcp://127.0.0.1:7310", P, TTL_S, bucket=bucket,
                               credentials=nats3.credentials, replicas=3, on_event=events.append,
                               journal_ok=lambda: not broken.is_set())).start()
    try:
        wait_for(lambda: len(t.agent.table.owned()) == P, 40, "the agent holds every partition")
        broken.set()
        wait_for(lambda: any(e["ev"] == "journal_unavailable" for e in events), 20, "the agent saw it")
        time.sleep(3 * TTL_S)                           # past the hand-over wait
        assert journal_unavailable(heartbeat(nats3, bucket, "solo"))
        assert len(t.agent.table.owned()) == P and not [e for e in events if e["ev"] == "released"]
    finally:
        assert t.stop(10)


def test_a_heartbeat_says_journal_unavailable_only_with_the_exact_flag():
    assert journal_unavailable(b'{"node":"a","advertise":"","journal_ok":false}')
    for v in (b'{"node":"a","advertise":""}', b'{"journal_ok":0}', b'{"journal_ok":"false"}',
              b'[false]', b'not json', b'\xff', b'[' * 100_000, b''):
        assert not journal_unavailable(v), v
