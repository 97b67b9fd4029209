"""Lease agents on threads of this process (how an engine node runs one) and
`risk-engine cluster status` reading what they hold: owner, revision and age per partition;
stopping an agent stops its serving at once and frees its leases. `cluster drain` refuses a
bad node without writing anything, and hands a node's partitions over one at a time: the next
only once the taker's prepare (its take-over) returned and its lease says ready."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from types import SimpleNamespace

from engine.cluster.agent import LeaseAgent
from engine.cluster.agentthread import AgentThread
from engine.cluster.leases import LeaseStore, connect_once
from engine.cluster.ownership import now_ns
from tests.cluster.agentproc import REPO, wait_for

P = 8
PREPARE_S = 0.8     # a take-over's replay held back: several ticks (TTL 1 s: a tick 0.125 s)


def status(cluster, bucket, *extra):
    return subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                           ",".join(cluster.urls), "--credentials", cluster.credentials, "--bucket", bucket, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def held_status(cluster, bucket, *args):
    """`cluster status` once no partition is free: a balancing hand-over (a release, then the
    other agent's take) leaves one free for a moment, exit 1; bounded at 20 tries."""
    for _ in range(20):
        out = status(cluster, bucket, *args)
        if out.returncode != 1:
            return out
        time.sleep(0.5)
    return out


def test_status_shows_what_the_agents_hold_and_stopping_frees_it(nats3, bucket):
    threads = [AgentThread(LeaseAgent(nats3.urls, f"t{i}", f"tcp://127.0.0.1:{7000 + i}", P, 2.0,
                                      bucket=bucket, credentials=nats3.credentials, replicas=3)).start() for i in range(2)]
    try:
        wait_for(lambda: sum(len(t.agent.table.owned()) for t in threads) == P
                 and all(t.agent.table.owned() for t in threads), 40, "both agents own partitions")
        tables = {t.agent.node: t.agent.table.owned() for t in threads}
        out = held_status(nats3, bucket, "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["partitions"] == P and st["bucket"] == bucket
        for r in st["leases"]:
            owner = r["owner"]
            # a balancing hand-over may move one between the two reads: then it is one of theirs
            assert owner in tables, r
            assert r["advertise"] == f"tcp://127.0.0.1:{7000 + int(owner[1])}"
            assert r["revision"] >= 1 and 0 <= r["lease_age_s"] < 60
            assert r["ready"] is True                   # no prepare hook: ready when taken
        text = held_status(nats3, bucket)
        assert text.returncode == 0 and f"{P} partitions, 0 free" in text.stdout
        assert "PARTITION  OWNER" in text.stdout and " yes  tcp://127.0.0.1:700" in text.stdout
    finally:
        for t in threads:
            assert t.stop(10)
    for t in threads:
        assert t.error is None and t.agent.table.owned() == {}
    out = status(nats3, bucket, "--json")
    assert out.returncode == 1                      # every lease released: all free
    assert all(r["owner"] is None for r in json.loads(out.stdout)["leases"])


def test_status_of_a_missing_bucket_or_server_exits_2(nats3, bucket):
    out = status(nats3, bucket)
    assert out.returncode == 2 and "no lease bucket on these servers" in out.stderr
    out = status(SimpleNamespace(urls=["nats://127.0.0.1:1"], credentials=nats3.credentials), bucket)
    assert out.returncode == 2 and "cannot connect" in out.stderr and "Traceback" not in out.stderr


def test_status_without_the_password_or_with_a_bad_file_exits_2(nats3, bucket, tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                          ",".join(nats3.urls), "--bucket", bucket], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "Authorization Violation" in out.stderr, out.stderr
    loose = tmp_path / "creds.json"
    loose.write_bytes(open(nats3.credentials, "rb").read())
    loose.chmod(0o644)
    out = status(SimpleNamespace(urls=nats3.urls, credentials=str(loose)), bucket)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"cluster.credentials: {loose} has mode 0644: group/other bits must be clear" in out.stderr


def test_an_agent_whose_servers_do_not_answer_fails_to_start_in_bounded_time():
    out = subprocess.run([sys.executable, "-m", "engine.cluster.agent_cli", "--servers", "nats://127.0.0.1:1",
                          "--node", "x", "--open-timeout-s", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "risk-engine: cluster: servers=nats://127.0.0.1:1: no NATS server answered within 2 s" in out.stderr
    assert '"ev":"started"' not in out.stdout


def drain(cluster, bucket, *args):
    return subprocess.run([sys.executable, "-m", "engine.cli", "cluster", *args, "--servers",
                           ",".join(cluster.urls), "--credentials", cluster.credentials, "--bucket", bucket],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def drain_keys(nats3, bucket):
    async def read():
        nc = await connect_once(nats3.urls, nats3.credentials)
        try:
            return (await LeaseStore(nc.jetstream(timeout=5.0), bucket, 5.0).roster())[1]
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(read(), 30))


def test_drain_refuses_a_bad_node_and_changes_nothing(nats3, bucket):
    t = AgentThread(LeaseAgent(nats3.urls, "solo", "tcp://127.0.0.1:7100", P, 2.0,
                               bucket=bucket, credentials=nats3.credentials, replicas=3)).start()
    try:
        wait_for(lambda: len(t.agent.table.owned()) == P, 40, "the agent holds every partition")
        out = drain(nats3, bucket, "drain", "nosuch")
        assert out.returncode == 2 and "node=nosuch: unknown" in out.stderr \
            and "nodes: solo" in out.stderr and "nothing changed" in out.stderr, out.stderr
        out = drain(nats3, bucket, "drain", "a.b")
        assert out.returncode == 2 and "must be 1-32 letters" in out.stderr, out.stderr
        # the only node: nobody could take its partitions
        out = drain(nats3, bucket, "drain", "solo")
        assert out.returncode == 2 and "no other undrained node" in out.stderr, out.stderr
        out = drain(nats3, bucket, "undrain", "solo")
        assert out.returncode == 2 and "not drained" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert drain_keys(nats3, bucket) == set()
        assert len(t.agent.table.owned()) == P          # still serving everything
    finally:
        assert t.stop(10)


async def slow_prepare(p, rev):
    await asyncio.sleep(PREPARE_S)
    return True


def test_drain_hands_every_partition_over_one_at_a_time(nats3, bucket):
    events: list[dict] = []
    threads = [AgentThread(LeaseAgent(nats3.urls, f"d{i}", f"tcp://127.0.0.1:{7200 + i}", P, 1.0,
                                      bucket=bucket, credentials=nats3.credentials, replicas=3, on_event=events.append,
                                      prepare=slow_prepare)).start()
               for i in range(3)]
    try:
        wait_for(lambda: sum(len(t.agent.table.owned()) for t in threads) == P
                 and all(t.agent.table.owned() for t in threads), 40, "every agent holds partitions")
        out = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "drain", "d0", "--servers",
                              ",".join(nats3.urls), "--credentials", nats3.credentials, "--bucket", bucket, "--timeout-s", "60", "--json"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        res, res_t_ns = json.loads(out.stdout), now_ns()
        assert res["left"] == [] and res["moved"]
        assert all(m["to"] in ("d1", "d2") for m in res["moved"])
        assert threads[0].agent.table.owned() == {}
        wait_for(lambda: sum(len(t.agent.table.owned()) for t in threads[1:]) == P, 20,
                 "the others hold every partition")
        # one at a time: each drain release after another node's prepare of the previous one
        # returned (its "ready"; "acquired" alone is not serving: a replay may still run)
        # (balancing may move one before d0 reads its key: what it held then is what it drains)
        held = {p for e in events if e["ev"] == "draining" for p in e["held"]}
        rel = [e for e in events if e["ev"] == "released" and e.get("why") == "drain"]
        assert {e["p"] for e in rel} == held and len(rel) >= 2, rel
        for a, b in zip(rel, rel[1:]):
            assert any(e["ev"] == "ready" and e["p"] == a["p"] and e["node"] != "d0"
                       and a["t_ns"] < e["t_ns"] < b["t_ns"] for e in events), (a, b)
        # the lease values say so too: every partition served, by d1 or d2, marked ready
        wait_for(lambda: all(r["ready"] for r in json.loads(held_status(
            nats3, bucket, "--json").stdout)["leases"]), 20, "every lease marked ready")
        time.sleep(3)                                   # drained: it takes nothing back
        assert threads[0].agent.table.owned() == {}
        assert drain_keys(nats3, bucket) == {"d0"}
        # restarted, it is still drained: it takes nothing
        assert threads[0].stop(10)
        threads[0] = AgentThread(LeaseAgent(nats3.urls, "d0", "tcp://127.0.0.1:7200", P, 1.0,
                                            bucket=bucket, credentials=nats3.credentials, replicas=3, on_event=events.append)).start()
        wait_for(lambda: any(e["ev"] == "draining" and e["node"] == "d0" and e["t_ns"] > res_t_ns
                             for e in list(events)), 20,
                 "the restarted agent read its drain key")
        time.sleep(3)
        assert threads[0].agent.table.owned() == {}
        assert not [e for e in events if e["ev"] == "acquired" and e["node"] == "d0"
                    and e["t_ns"] > res_t_ns]
        out = drain(nats3, bucket, "undrain", "d0")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: threads[0].agent.table.owned(), 30, "undrained: it takes partitions again")
    finally:
        for t in threads:
            assert t.stop(10)


def test_cluster_up_refuses_a_worker_count_that_does_not_divide_the_partitions(tmp_path):
    """Refused before anything starts (exit 2, one line naming both flags)."""
    r = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "up", "--partitions", "8",
                        "--workers", "3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--workers=3 does not divide --partitions=8" in r.stderr
    assert "nats" not in r.stdout.lower()
