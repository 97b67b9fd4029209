"""`risk-engine cluster drain NODE` under load: two real engine nodes on the module's three
NATS servers, a cluster-mode client sending decisions the whole time; draining one node
hands all its partitions to the other with no failed request, and the drained node holds
none at the end. Two engines start (a cold Numba cache compiles for minutes): slow.

Allowed outcomes: any number of NOT_OWNER redirects (within the client's bound) and any
order of hand-over; not allowed: a request that fails, a partition left on the drained node."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.cluster_failover import client_load
from bench.engine_proc import EngineProcess
from ingress.cluster_client import ClusterClient
from tests.cluster.agentproc import REPO, wait_for
from tests.cluster.test_config_cluster import shard_keyed_features
from tests.cluster.test_node import serving
from tests.cluster.test_routing import owned

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

P = 8
TTL_S = 2.0


def test_drain_under_load_fails_no_request_and_leaves_the_node_empty(nats3, tmp_path):
    engines = [EngineProcess(tmp_path, workers=1, overrides={
        "cluster": {"servers": list(nats3.urls), "credentials": nats3.credentials, "partitions": P, "node": f"dr{i}", "lease_ttl_s": TTL_S},
        "workers": {"standby": False},
        "features": shard_keyed_features()}) for i in range(2)]     # a cluster refuses other keys
    with serving(engines) as (a, b):
        wait_for(lambda: owned(a) and owned(b) and owned(a) | owned(b) == set(range(P)), 90,
                 "both nodes hold partitions, every partition held")
        with ClusterClient(nats3.urls, credentials=nats3.client_credentials, timeout_ms=5000, retries=3, deadline_ms=5000) as cc:   # ack: sync
            with client_load(cc, 10_000) as (ok, failed):
                wait_for(lambda: ok[0] >= 50, 60, "load running")
                before = ok[0]
                out = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "drain", "dr0",
                                      "--servers", ",".join(nats3.urls), "--credentials", nats3.credentials, "--timeout-s", "120", "--json"],
                                     cwd=REPO, capture_output=True, text=True, timeout=200)
                assert out.returncode == 0, out.stdout + out.stderr
                res = json.loads(out.stdout)
                wait_for(lambda: ok[0] >= before + 100, 60, "load still answered after the drain")
            print(f"drain moved {len(res['moved'])} partition(s) in {res['seconds']} s; "
                  f"{ok[0]} decisions, {cc.redirects} redirect(s) followed, {len(failed)} failed")
        assert failed == []
        assert res["left"] == [] and all(m["to"] == "dr1" for m in res["moved"])
        assert owned(a) == set() and owned(b) == set(range(P))
