"""A multi-event batch across a hand-over through ``ClusterClient.evaluate_batch`` (issue 24:
"nothing counted twice" for batches in cluster mode).

Two engine nodes a and b hold P/2 partitions each. Node a's clients reach it through a ZeroMQ
proxy of the test's own (a's ``advertise``) that passes requests on and drops every reply
while told to: a decides and journals what it gets, the client never hears. One
``evaluate_batch`` call sends a batch of one event (one account) per partition, a's highest
partition first. Once a has decided part of it and published that, a third node c starts;
each of a and b hands over its highest partition (the agent's share rule: ceil(8/3) = 3), c
takes them, and the proxy passes replies again. The call's retries and redirects then reach
the partitions' owners as the map says.

Required: the call returns one decision per event; over the three nodes' journals each
account's event was evaluated exactly once, each returned decision is that evaluation's
(action, score), and each account's `txn_count_1m` at its partition's owner counts 1.
Split by owner (the client before issue 24's fix), the request of a's partitions went under
one id; after the hand-over the call re-split it under new ids and a's events were decided
again (seen: account 9100000 journaled twice); a resend reaching c under the old id would
have been refused IDEMPOTENCY_CONFLICT (c's window holds only the moved partition's part).
Three engines start: slow."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zmq

from bench.engine_proc import EngineProcess
from engine.journal import JournalReader, list_writers
from ingress.admission import shard_of
from ingress.client import _ACTIONS
from ingress.cluster_client import ClusterClient
from shm.runtime.config import load_config
from tests.cluster.agentproc import wait_for
from tests.cluster.test_handover import DEADLINE_MS, TTL_S
from tests.cluster.test_node import EVENT, P, cluster_overrides, feature_rows, start_all
from tests.cluster.test_routing import owned

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

CID = 0x5EED_0000_0B24


class LossyProxy:
    """ROUTER in front of one engine: each request goes on through a DEALER of its own; the
    reply is passed back, or dropped (and counted) while ``drop`` is set."""

    def __init__(self, ctx: zmq.Context):
        self.ctx, self.drop, self.dropped = ctx, True, 0
        self.front = ctx.socket(zmq.ROUTER)
        self.front.linger = 0
        self.front.bind("tcp://127.0.0.1:*")
        self.address = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = None

    def start(self, backend: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(backend,), daemon=True)
        self._thread.start()

    def _run(self, backend: str) -> None:
        poller, pending = zmq.Poller(), {}
        poller.register(self.front, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for s, _ in poller.poll(100):
                    if s is self.front:
                        ident, _, payload = self.front.recv_multipart()
                        d = self.ctx.socket(zmq.DEALER)
                        d.linger = 0
                        d.connect(backend)
                        d.send_multipart([b"", payload])
                        poller.register(d, zmq.POLLIN)
                        pending[d] = ident
                    else:
                        reply = s.recv_multipart()[-1]
                        if self.drop:
                            self.dropped += 1
                        else:
                            self.front.send_multipart([pending[s], b"", reply])
                        poller.unregister(s)
                        s.close()
                        del pending[s]
        finally:
            for d in pending:
                d.close()
            self.front.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def records_of(eng) -> np.ndarray:
    """``eng``'s journal records of the test's client id."""
    jdir, s = eng.raw["journal"]["dir"], eng.schema
    out = [r[r["client_id"] == CID] for w in list_writers(jdir)
           for r in [JournalReader(jdir, s.dtype, s.hash, w).read_all()]]
    return np.concatenate(out) if out else np.zeros(0, s.dtype)


def test_a_batch_resent_across_a_hand_over_is_decided_once_per_event(nats3, tmp_path):
    ctx = zmq.Context.instance()
    proxy = LossyProxy(ctx)
    engines = []
    for name in ("bh-a", "bh-b", "bh-c"):
        ov = cluster_overrides(nats3, name)
        ov["cluster"]["lease_ttl_s"] = TTL_S
        if name == "bh-a":
            ov["cluster"]["advertise"] = proxy.address
        engines.append(EngineProcess(tmp_path, workers=1, overrides={**ov, "snapshot": {"interval_s": 3600}}))
    for e in engines:
        e.schema = load_config(e.config_path).schema
    a, b, c = engines
    proxy.start(a.endpoint)
    pool = ThreadPoolExecutor(1)
    try:
        start_all([a, b])
        wait_for(lambda: len(owned(a)) == len(owned(b)) == P // 2 and owned(a) | owned(b) == set(range(P)),
                 300, f"a and b hold {P // 2} partitions each")
        oa = sorted(owned(a))
        ids = np.arange(9_100_000, 9_100_000 + 4096, dtype=np.int64)
        pid = shard_of(ids, P)
        acct = {p: int(ids[pid == p][0]) for p in range(P)}          # one account per partition
        order = [oa[-1]] + [p for p in range(P) if p != oa[-1]]      # a's highest partition first
        events = [{**EVENT, "account_id": acct[p], "amount": 10.0 + p} for p in order]

        def published():
            return {r["what"]: r["value"] for r in a.stats()["risk_cluster_replication"]}["records"]
        cc = ClusterClient(nats3.urls, a.schema, credentials=nats3.client_credentials, timeout_ms=2_000,
                           retries=200, deadline_ms=DEADLINE_MS, client_id=CID)
        try:
            wait_for(lambda: all(cc.owner(p) for p in range(P)), 60, "the client's map names every owner")
            call = pool.submit(cc.evaluate_batch, events)
            wait_for(lambda: proxy.dropped >= 1 or call.done(), 120, "a decided part of the batch, reply lost")
            assert not call.done(), call.result()
            n = len(records_of(a))
            assert n >= 1
            wait_for(lambda: published() >= n, 60, "a published what it decided")
            start_all([c])
            wait_for(lambda: oa[-1] in owned(c) and set(oa[:-1]) <= owned(a), 300,
                     f"c took partition {oa[-1]} from a, a kept {oa[:-1]}")
            proxy.drop = False
            got = call.result(timeout=600)
        finally:
            cc.close()

        recs = np.concatenate([records_of(e) for e in engines])
        assert len(got) == len(events) and all(d.error is None for d in got), got
        for ev, d in zip(events, got):
            mine = recs[recs["event"]["account_id"] == ev["account_id"]]
            assert len(mine) == 1, (ev["account_id"], len(mine), d)       # evaluated once
            assert (d.action, d.score, d.generation) == (_ACTIONS[int(mine["action"][0])], float(mine["score"][0]),
                                                         int(mine["generation"][0])), (ev, d)
        held = {e: owned(e) for e in engines}
        for p in range(P):
            rows = feature_rows(next(e for e in engines if p in held[e]), p)["ft_txn_count_1m"]
            row = rows[rows[:, 0] == acct[p]]
            assert len(row) == 1 and int(row[0, 2:].view(np.uint32).sum()) == 1, (p, acct[p], row)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        proxy.close()
        for e in engines:
            rc = e.close()
            assert rc in (0, None), e.output()
