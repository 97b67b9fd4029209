"""Exactness across a hand-over in `risk-engine serve` (docs/CLUSTER.md, "Failover in serve"):
two real engine nodes on the module's three NATS servers; node a decides request 1, publishes
it and writes a snapshot object covering it (every second), decides request 2, publishes it,
and is killed -9; node b takes a's partitions.

- A resend of each request to b (same client id, request id and bytes, as a client whose
  reply was lost sends it) gets a's decision back flagged DUPLICATE, and b evaluates, journals
  and counts nothing: b rebuilt its idempotency window from the stream, request 1 from the
  messages the snapshot object covers, request 2 from the records replayed after it (or from
  a newer object's, if a wrote one before the kill: both allowed).
- A worker of b killed after the take-over: b's tables are rebuilt from b's own snapshot and
  journal, and the account's row still holds what the take-over restored (b snapshots the
  taken rows before serving them).

Allowed outcomes: any assignment of partitions to the nodes, any take-over time within the
waits, the partition moving from a to b by a lease hand-over before the kill (b then took it
that way; request 2 is then not sent); not allowed: the resend decided again, a row that loses the restored event. Two
engines start (a cold Numba cache compiles for minutes): slow."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest

from bench.engine_proc import EngineProcess
from engine.journal import JournalReader, list_writers
from ingress.admission import shard_of
from ingress.client import Client, RequestError
from shm.features.spec import specs_from_config
from shm.features.rows import copy_rows
from shm.features.table import PAYLOAD_OFF, table_words
from shm.names import segment_name
from shm.runtime.config import load_config
from shm.segment import Segment
from shm.types import ErrorCode
from tests.cluster.agentproc import wait_for
from tests.cluster.test_node import EVENT, P, cluster_overrides, owned_account, start_all
from tests.cluster.test_routing import owned

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FEATURE = "txn_count_1m"          # a count keyed by the account
TTL_S = 3.0
DEADLINE_MS = 10_000            # ack: sync on a loaded machine: not the 50 ms default


def row_payload(eng, name: str, key: int) -> np.ndarray | None:
    """The payload words of ``key``'s row in ``eng``'s feature table (read from its shared
    memory under the slot lock), or None when the key has no row."""
    spec = next(s for s in specs_from_config(load_config(eng.config_path)).features if s.name == name)
    seg = Segment.attach(segment_name(eng.instance, f"ft_{name}", eng.proc.pid))
    try:
        t = seg.array(np.uint64, 0, table_words(spec.capacity, spec.slot_words))
        rows = np.zeros((1, spec.slot_words), np.uint64)
        n = copy_rows(t, spec.capacity, spec.slot_words, spec.probe_len, np.array([key], np.uint64), rows)
        assert n >= 0, n
        del t
        return rows[0, PAYLOAD_OFF:].copy() if n else None
    finally:
        seg.close()


def journaled(eng, client_id: int, request_id: int) -> int:
    """Records of (client_id, request_id) in ``eng``'s journal."""
    jdir, s = eng.raw["journal"]["dir"], eng.schema
    n = 0
    for w in list_writers(jdir):
        r = JournalReader(jdir, s.dtype, s.hash, w).read_all()
        n += int(((r["client_id"] == client_id) & (r["request_id"] == request_id)).sum())
    return n


def test_a_resend_to_the_next_owner_gets_the_first_decision_and_a_worker_crash_keeps_the_taken_rows(
        nats3, tmp_path):
    # a writes snapshot objects every second; b takes no periodic snapshot, only the take's own.
    # TTL 3 s: on a loaded machine a 1 s lease lapses now and then and the partitions move
    engines = []
    for i, iv in enumerate((1, 3600)):
        ov = cluster_overrides(nats3, f"ho{i}")
        ov["cluster"]["lease_ttl_s"] = TTL_S
        engines.append(EngineProcess(tmp_path, workers=1, overrides={**ov, "snapshot": {"interval_s": iv}}))
    for e in engines:
        e.schema = load_config(e.config_path).schema
    a, b = engines
    try:
        start_all(engines)

        def balanced():                 # every partition held, none over a node's share:
            oa, ob = owned(a), owned(b)  # the agents release no lease from here on
            return max(len(oa), len(ob)) <= P // 2 and not oa & ob and oa | ob == set(range(P))
        wait_for(balanced, 300, f"the nodes hold {P // 2} partitions each")
        cid, first, resend = 0x5EED_0000_0001, {}, {}

        def published():
            return {r["what"]: r["value"] for r in a.stats()["risk_cluster_replication"]}["records"]

        def objects():
            return {r["what"]: r["value"] for r in a.stats()["risk_cluster_snapshot_objects"]}["written"]

        def decide_at_a(c, acct, rid, amount):
            """a's decision, or None if a no longer holds the partition (NOT_OWNER: a lease
            that moved on the loaded machine; nothing was evaluated)."""
            recs = c.codec.records([{**EVENT, "account_id": acct, "amount": amount}])
            try:
                d = c.codec.parse(c._attempt(c.codec.frame(recs, rid, DEADLINE_MS, False), 20_000), rid, 1)[0]
            except RequestError as e:
                if e.code != ErrorCode.NOT_OWNER:
                    raise
                return None
            assert d.error is None and "DUPLICATE" not in d.flags, d
            first[rid], resend[rid] = d, c.codec.frame(recs, rid, DEADLINE_MS, True)
            wait_for(lambda: published() >= len(first), 60, f"a published request {rid}")
            return d
        with Client(a.endpoint, a.schema, timeout_ms=20_000, retries=0, client_id=cid) as c:
            for _ in range(20):                 # an account of a partition a holds
                acct = owned_account(a)
                if decide_at_a(c, acct, 41, 10.0) is not None:
                    break
            assert 41 in first, "a never decided request 41"
            n = objects()                       # an object round started after the publish
            wait_for(lambda: objects() > n, 60, "a wrote a snapshot object")
            time.sleep(2.5)
            decide_at_a(c, acct, 42, 20.0)      # None: the partition moved to b meanwhile
        p = int(shard_of(np.array([acct], np.int64), P)[0])
        a.kill()
        wait_for(lambda: p in owned(b), 60, f"b took partition {p}")
        taken = row_payload(b, FEATURE, acct)
        assert taken is not None and taken.any(), "the take-over restored a's event"
        took = [ln for ln in b.output().splitlines() if f"partition {p}: taken at" in ln]
        assert took, b.output()[-3000:]
        if 42 in first:                 # p was a's after the object: taken after the kill
            assert "snapshot none" not in took[-1], took            # request 1 came in an object

        # (1) the resends, as after a lost reply: a's decisions, nothing evaluated again
        with Client(b.endpoint, b.schema, timeout_ms=20_000, retries=0, client_id=cid) as c:
            for rid, frame in resend.items():
                again = c.codec.parse(c._attempt(frame, 20_000), rid, 1)[0]
                assert "DUPLICATE" in again.flags, (rid, again, b.output()[-3000:])
                assert (again.action, again.score, again.error) == \
                    (first[rid].action, first[rid].score, None)
                assert journaled(b, cid, rid) == 0
        assert np.array_equal(row_payload(b, FEATURE, acct), taken)

        # (2) a worker crash after the take-over: the rebuilt row still holds a's event
        w0 = [q for q in psutil.Process(b.proc.pid).children() if "worker 0" in " ".join(q.cmdline())]
        os.kill(w0[0].pid, signal.SIGKILL)
        wait_for(lambda: "worker 0 serving again" in b.output(), 120, "b's worker restarted")
        assert "worker crash:" in b.output()
        assert np.array_equal(row_payload(b, FEATURE, acct), taken), "the taken row was lost"
    finally:
        a.kill()
        a.close()
        assert b.close() == 0, b.output()
