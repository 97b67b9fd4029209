"""A resend across a hand-over whose event records carry non-zero padding bytes (issue 24: a
cluster-mode client that resent a request to the taker after a kill -9 got
IDEMPOTENCY_CONFLICT, about once per kill, in tests/cluster/test_failover_timeline.py).

The padding of a record is ignored by the engine (docs/PROTOCOL.md, section 2) and the journal
stores it as zeros; the Python cluster client sends whatever numpy's fancy indexing left there
(``recs[idx]`` leaves a padded record dtype's padding uninitialised). Node a decides a request
whose padding bytes are not zero, publishes it, and is killed -9; node b takes the partition
and rebuilds its idempotency window from the stream. The resend of the very same bytes to b
must get a's decision back (same action, score, generation, flagged DUPLICATE, no error) and b
must evaluate and journal nothing. Allowed: any assignment of partitions, the partition moving
to b before the kill (then nothing is resent: the test says so and skips). Two engines start
(a cold Numba cache compiles for minutes): slow."""
from __future__ import annotations

import numpy as np
import pytest

from bench.engine_proc import EngineProcess
from ingress.admission import shard_of
from ingress.client import Client, RequestError
from shm.journal_append import field_mask
from shm.runtime.config import load_config
from shm.types import ErrorCode
from tests.cluster.agentproc import wait_for
from tests.cluster.test_handover import DEADLINE_MS, TTL_S, journaled
from tests.cluster.test_node import EVENT, P, cluster_overrides, owned_account, start_all
from tests.cluster.test_routing import owned

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CID, RID = 0x5EED_0000_0024, 24


def padded(recs: np.ndarray) -> np.ndarray:
    """``recs`` with every padding byte set to 0xA5 (fields unchanged)."""
    out = recs.copy()
    raw = out.view(np.uint8).reshape(len(out), -1)
    raw[:, field_mask(out.dtype).view(np.uint8) == 0] = 0xA5
    return out


def test_a_resend_with_nonzero_padding_to_the_taker_gets_the_first_decision(nats3, tmp_path):
    engines = []
    for i in range(2):
        ov = cluster_overrides(nats3, f"pad{i}")
        ov["cluster"]["lease_ttl_s"] = TTL_S
        engines.append(EngineProcess(tmp_path, workers=1, overrides={**ov, "snapshot": {"interval_s": 3600}}))
    for e in engines:
        e.schema = load_config(e.config_path).schema
    a, b = engines
    try:
        start_all(engines)
        wait_for(lambda: max(len(owned(a)), len(owned(b))) <= P // 2 and owned(a) | owned(b) == set(range(P))
                 and not owned(a) & owned(b), 300, f"the nodes hold {P // 2} partitions each")
        with Client(a.endpoint, a.schema, timeout_ms=20_000, retries=0, client_id=CID) as c:
            first = None
            for _ in range(20):                 # an account of a partition a holds now
                acct = owned_account(a)
                recs = padded(c.codec.records([{**EVENT, "account_id": acct, "amount": 24.0}]))
                assert (recs.view(np.uint8) == 0xA5).any()
                try:
                    frame = c.codec.frame(recs, RID, DEADLINE_MS, False)
                    first = c.codec.parse(c._attempt(frame, 20_000), RID, 1)[0]
                    break
                except RequestError as e:       # the lease moved on the loaded machine
                    assert e.code == ErrorCode.NOT_OWNER, e
            assert first is not None and first.error is None and "DUPLICATE" not in first.flags, first
            resend = c.codec.frame(recs, RID, DEADLINE_MS, True)
            again = c.codec.parse(c._attempt(resend, 20_000), RID, 1)[0]   # a's own window
            assert "DUPLICATE" in again.flags and again.error is None, again
        stats = lambda: {r["what"]: r["value"] for r in a.stats()["risk_cluster_replication"]}  # noqa: E731
        wait_for(lambda: stats()["records"] >= 1, 60, "a published the request")
        p = int(shard_of(np.array([acct], np.int64), P)[0])
        if p not in owned(a):
            pytest.skip(f"partition {p} moved to b before the kill (a hand-over, not a failover)")
        a.kill()
        wait_for(lambda: p in owned(b), 60, f"b took partition {p}")
        with Client(b.endpoint, b.schema, timeout_ms=20_000, retries=0, client_id=CID) as c:
            got = c.codec.parse(c._attempt(resend, 20_000), RID, 1)[0]
        assert "DUPLICATE" in got.flags, (got, b.output()[-3000:])
        assert (got.action, got.score, got.generation, got.error) == \
            (first.action, first.score, first.generation, None)
        assert journaled(b, CID, RID) == 0              # evaluated once, by a
    finally:
        a.kill()
        a.close()
        assert b.close() == 0, b.output()
