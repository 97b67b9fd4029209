"""Lease agents on threads of this process (how an engine node runs one) and
`risk-engine cluster status` reading what they hold: owner, revision and age per partition;
stopping an agent stops its serving at once and frees its leases."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from engine.cluster.agent import AgentThread, LeaseAgent
from tests.cluster.agentproc import REPO, wait_for

P = 8


def status(servers, bucket, *extra):
    return subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                           ",".join(servers), "--bucket", bucket, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def held_status(urls, bucket, *args):
    """`cluster status` once no partition is free: a balancing hand-over (a release, then the
    other agent's take) leaves one free for a moment, exit 1; bounded at 20 tries."""
    for _ in range(20):
        out = status(urls, bucket, *args)
        if out.returncode != 1:
            return out
        time.sleep(0.5)
    return out


def test_status_shows_what_the_agents_hold_and_stopping_frees_it(nats3, bucket):
    threads = [AgentThread(LeaseAgent(nats3.urls, f"t{i}", f"tcp://127.0.0.1:{7000 + i}", P, 2.0,
                                      bucket=bucket, replicas=3)).start() for i in range(2)]
    try:
        wait_for(lambda: sum(len(t.agent.table.owned()) for t in threads) == P
                 and all(t.agent.table.owned() for t in threads), 40, "both agents own partitions")
        tables = {t.agent.node: t.agent.table.owned() for t in threads}
        out = held_status(nats3.urls, bucket, "--json")
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["partitions"] == P and st["bucket"] == bucket
        for r in st["leases"]:
            owner = r["owner"]
            # a balancing hand-over may move one between the two reads: then it is one of theirs
            assert owner in tables, r
            assert r["advertise"] == f"tcp://127.0.0.1:{7000 + int(owner[1])}"
            assert r["revision"] >= 1 and 0 <= r["lease_age_s"] < 60
        text = held_status(nats3.urls, bucket)
        assert text.returncode == 0 and f"{P} partitions, 0 free" in text.stdout
        assert "PARTITION  OWNER" in text.stdout
    finally:
        for t in threads:
            assert t.stop(10)
    for t in threads:
        assert t.error is None and t.agent.table.owned() == {}
    out = status(nats3.urls, bucket, "--json")
    assert out.returncode == 1                      # every lease released: all free
    assert all(r["owner"] is None for r in json.loads(out.stdout)["leases"])


def test_status_of_a_missing_bucket_or_server_exits_2(nats3, bucket):
    out = status(nats3.urls, bucket)
    assert out.returncode == 2 and "no lease bucket on these servers" in out.stderr
    out = status(["nats://127.0.0.1:1"], bucket)
    assert out.returncode == 2 and "cannot connect" in out.stderr and "Traceback" not in out.stderr


def test_an_agent_whose_servers_do_not_answer_fails_to_start_in_bounded_time():
    out = subprocess.run([sys.executable, "-m", "engine.cluster.agent", "--servers", "nats://127.0.0.1:1",
                          "--node", "x", "--open-timeout-s", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "risk-engine: cluster: servers=nats://127.0.0.1:1: no NATS server answered within 2 s" in out.stderr
    assert '"ev":"started"' not in out.stdout
