"""Issue 24 tests 3 and 6 with real engine nodes: two `serve` nodes on the module's three NATS
servers (8 partitions, TTL 4 s: a Raft election of a killed server's groups fits in a lease).

- A NATS server killed with -9 under load from a cluster-mode client: serving goes on; only
  NOT_OWNER (nothing evaluated) may fail, while the owners' renewals go unanswered during the
  elections; the server, restarted, catches up (its replica of the journal stream reaches the
  stream's last sequence).
- Split brain: node a's supervisor (its lease agent and replication) is stopped with SIGSTOP,
  then the rest of it, past its TTL; b takes its partitions. Resumed, a answers NOT_OWNER for
  them and evaluates nothing; the records a decided while only its supervisor was stopped
  (journaled, not yet published; with ack: sync, the default, answered TIMEOUT, never as
  decisions) are refused by b's fences, counted in a's metrics (refused publishes, replies
  resolved REPLICATION_FAILED), and the stream holds none of them; no request is decided by both.

Two engines start (a cold Numba cache compiles for minutes): slow."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import nats
import nats.errors
import numpy as np
import pytest

from engine.cluster.replog import ReplicationLog
from ingress.admission import shard_of
from bench.cluster_failover import client_load
from bench.engine_proc import EngineProcess
from ingress.client import Client, RequestError
from ingress.cluster_client import ClusterClient
from shm.types import ErrorCode
from shm.runtime.nats_auth import auth_options
from tests.cluster.agentproc import REPO, wait_for
from tests.cluster.test_config_cluster import shard_keyed_features
from tests.cluster.test_node import EVENT, serving
from tests.cluster.test_replication import _stream_last_seq
from tests.cluster.test_routing import eng_schema, journaled, owned

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

P = 8
TTL_S = 4.0
STREAM = "RISK_ENGINE_JOURNAL"


def node_pair(nats3, tmp, prefix: tuple = (), journal: dict | None = None, **extra) -> list[EngineProcess]:
    """Nodes f0 and f1 (not started), with the config sections ``extra``; f0 runs through
    ``prefix`` with ``journal`` overrides."""
    def overrides(i):
        o = {"cluster": {"servers": list(nats3.urls), "credentials": nats3.credentials, "partitions": P,
                         "node": f"f{i}", "lease_ttl_s": TTL_S},
             "workers": {"standby": False},
             "features": shard_keyed_features(), **extra}       # a cluster refuses other keys
        return {**o, "journal": journal} if i == 0 and journal else o
    return [EngineProcess(tmp, workers=1, overrides=overrides(i), prefix=() if i else prefix) for i in range(2)]


@pytest.fixture(scope="module")
def pair(nats3, tmp_path_factory):
    with serving(node_pair(nats3, tmp_path_factory.mktemp("faults"))) as engines:
        yield engines


def split(a, b):
    oa, ob = owned(a), owned(b)
    return oa and ob and not oa & ob and oa | ob == set(range(P))


def accounts_in(parts, n=1, start=10_000) -> list[int]:
    ids = np.arange(start, start + 20_000, dtype=np.int64)
    return ids[np.isin(shard_of(ids, P), sorted(parts))][:n].tolist()


def run_js(cluster, body, timeout_s=120):
    async def go():
        nc = await nats.connect(cluster.urls, **auth_options(cluster.credentials), connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            return await body(nc.jetstream(timeout=5.0))
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(go(), timeout_s))


def replication(eng) -> dict:
    """A node's risk_cluster_replication_total by ``what`` (its /stats; {} unreadable)."""
    return {r["what"]: r["value"] for r in (eng.stats() or {}).get("risk_cluster_replication", ())}


def replication_failed(eng) -> int:
    """A node's risk_replication_failed_total over its workers (its /stats)."""
    return int(sum(r["value"] for r in (eng.stats() or {}).get("risk_replication_failed", ())))


def not_owner(c, acct, held=None) -> bool:
    """Send one event; True: answered NOT_OWNER, False: evaluated: decided, or with ``held``
    a list, answered TIMEOUT (ack: sync: its reply held for a replication that never comes),
    which is appended there (any other error raises)."""
    try:
        d = c.evaluate({**EVENT, "account_id": acct})
    except RequestError as e:
        if e.code == ErrorCode.NOT_OWNER:
            return True
        raise
    if held is not None and d.error == "TIMEOUT":
        held.append(d)
        return False
    assert d.error is None, d
    return False


def test_a_killed_nats_server_under_load_keeps_serving_and_catches_up(nats3, pair):
    a, b = pair
    wait_for(lambda: split(a, b), 120, "both nodes hold partitions, every partition held")
    with ClusterClient(nats3.urls, credentials=nats3.client_credentials, timeout_ms=15_000, retries=3, deadline_ms=10_000) as cc, client_load(cc, 20_000) as (ok, failed):
        wait_for(lambda: ok[0] >= 50, 60, "load running")

        async def leader(js):
            return (await js.stream_info(STREAM)).cluster.leader
        name = run_js(nats3, leader)
        k = next(i for i, s in enumerate(nats3.servers) if s.name == name)
        nats3.kill(k)                           # the journal stream's Raft leader
        killed_at = ok[0]
        try:
            wait_for(lambda: ok[0] >= killed_at + 300, 120, "load answered without the server")
        finally:
            nats3.restart(k)
        wait_for(lambda: ok[0] >= killed_at + 400, 60, "load answered after the restart")

    async def caught_up(js):
        """The restarted server's replica reaches the stream's last sequence (bounded; a
        request may time out while the groups elect leaders)."""
        for _ in range(600):
            try:
                n = (await js.stream_info(STREAM)).state.last_seq
                if await asyncio.to_thread(_stream_last_seq, nats3.servers[k], STREAM) == n:
                    return n
            except (nats.errors.Error, asyncio.TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"server {name} did not catch up within the bound")
    end = run_js(nats3, caught_up, timeout_s=240)
    print(f"nats server {name} killed under load: {ok[0]} decisions, {cc.redirects} redirect(s), "
          f"{len(failed)} failed; its replica caught up to stream seq {end}")
    # an owner whose renewals went unanswered past TTL - TTL/4 during the elections stops
    # serving until it renews or the other node takes the partition: the client waits that
    # out (owner=none, or two nodes naming each other) for up to failover_wait_s (15 s)
    assert not failed, failed
    assert split(a, b)


def test_a_stopped_owner_resumed_serves_nothing_and_its_late_records_are_refused(nats3, pair):
    a, b = pair
    wait_for(lambda: split(a, b), 120, "both nodes hold partitions, every partition held")
    old = sorted(owned(a))
    accts = accounts_in(old, 20)
    schema = eng_schema()
    cid = 0x5B5B
    with Client(a.endpoint, timeout_ms=5000, retries=0, transport="binary", client_id=cid,
                deadline_ms=4000) as c:                 # ack: sync: past the replication
        for acct in accts[:5]:                  # a serves them, as usual
            assert c.evaluate({**EVENT, "account_id": acct}).error is None
    refused0, failed0 = replication(a).get("refused", 0), replication_failed(a)
    pgid = os.getpgid(a.pid)
    late = 0
    try:
        os.kill(a.pid, signal.SIGSTOP)          # the supervisor: lease agent and replication
        # its ingress and workers go on until the lease's deadline in the ownership segment
        # (at most TTL - TTL/4 after the last renewal): what they decide is journaled and
        # answered but not published (the tailer is stopped); request ids 1..late
        t_end = time.monotonic() + 60           # bounded; the deadline is seconds away
        # with ack: sync (the default) none of them is answered as a decision: each reply is
        # held for a replication that never comes, and the ingress answers TIMEOUT
        held = []
        with Client(a.endpoint, timeout_ms=5000, retries=0, transport="binary", client_id=cid + 1) as c:
            while time.monotonic() < t_end and not not_owner(c, accts[late % len(accts)], held):
                late += 1
        assert late > 0 and time.monotonic() < t_end, f"a evaluated {late} request(s) after its supervisor stopped"
        assert len(held) == late, f"{late - len(held)} of {late} answered as decisions under ack: sync"
        os.killpg(pgid, signal.SIGSTOP)         # now the whole engine, past its TTL
        wait_for(lambda: owned(b) == set(range(P)), 60, "b holds every partition")
        # drained, a takes nothing back when it resumes (the rebalance is shown elsewhere)
        out = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "drain", "f0", "--servers",
                              ",".join(nats3.urls), "--credentials", nats3.credentials, "--timeout-s", "30"], cwd=REPO, capture_output=True,
                             text=True, timeout=90)
        assert out.returncode == 0, out.stdout + out.stderr
        with ClusterClient(nats3.urls, credentials=nats3.client_credentials, timeout_ms=5000, retries=3, client_id=cid + 2, deadline_ms=4000) as cc:
            wait_for(lambda: all(cc.owner(p) == b.endpoint for p in range(P)), 30, "the map names b")
            for acct in accts:
                assert cc.evaluate({**EVENT, "account_id": acct}).error is None
    finally:
        os.killpg(pgid, signal.SIGCONT)
    with Client(a.endpoint, timeout_ms=10_000, retries=0, transport="binary", client_id=cid + 3) as c:
        assert all(not_owner(c, acct) for acct in accts[:5])
    wait_for(lambda: replication(a).get("refused", 0) > refused0, 60, "a's late publishes refused by fencing")
    # the held replies then resolve REPLICATION_FAILED (the ingress had answered TIMEOUT), counted
    wait_for(lambda: replication_failed(a) - failed0 >= late, 60, "a's held replies counted REPLICATION_FAILED")
    assert replication_failed(a) - failed0 == late

    async def stream(js):
        log = ReplicationLog(js, "check", schema.dtype, schema.shard_key, P)
        out = {}
        for p in old:
            out[p] = [m async for m in log.replay(p)]
        return out
    msgs = run_js(nats3, stream)
    in_stream = {(int(r["client_id"]), int(r["request_id"])) for ms in msgs.values() for m in ms
                 if m.kind == "rec" for r in m.records}
    late_ids = {(cid + 1, r) for r in range(1, late + 1)}
    ours = range(cid, cid + 4)                # this test's clients (earlier loads may retry
    a_ids = {(c_, r) for c_, r, _ in journaled(a) if c_ in ours}   # across a hand-over)
    b_ids = {(c_, r) for c_, r, _ in journaled(b) if c_ in ours}
    assert late_ids <= a_ids                  # journaled by a ...
    assert not late_ids & in_stream           # ... never in the stream: refused by b's fences
    assert not a_ids & b_ids                  # no request decided by both owners
    assert (cid + 1, late + 1) not in a_ids   # answered NOT_OWNER: not evaluated
    assert not any(c_ == cid + 3 for c_, _ in a_ids)
    for p, ms in msgs.items():                # after b's last fence, only b's records
        fence = max(i for i, m in enumerate(ms) if m.kind == "fence")
        assert ms[fence].node == "f1" and all(m.node == "f1" for m in ms[fence:]), p
    print(f"split brain: a decided {late} request(s) on its lapsed term, refused by fencing "
          f"({replication(a)}); b took {len(old)} partition(s)")
