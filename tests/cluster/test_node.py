"""`risk-engine serve` with a cluster: section: three real engine nodes on the module's
three-server NATS cluster hold every partition between them, and the control plane in KV
(halt, lists, account states) written through any node's admin plane is applied by every
node; a node starting later joins at the current state; a stopped node leaves no segment
and frees its leases. Engines start in parallel (minutes cold on a loaded machine): slow."""
from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from types import SimpleNamespace

import nats as nats_client
import numpy as np
import pytest

from bench.engine_proc import EngineProcess, free_port, shm_entries
from engine.admin import request
from engine.cluster.control import ControlClient
from engine.cluster.members import share
from ingress.admission import shard_of
from engine.cluster.partition import partition_of
from engine.cluster.partstate import PartitionState
from engine.cluster.replog import ReplicationLog
from ingress.client import Client
from shm.featurestore import FeatureStore
from shm.runtime.config import load_config
from shm.runtime.nats_auth import auth_options
from tests.cluster.agentproc import REPO, wait_for
from tests.cluster.test_config_cluster import shard_keyed_features

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]   # a cold start compiles the rules

P = 8
TTL_S = 1.0
EVENT = {"account_id": 77, "card_id": 1, "device_id": 1, "amount": 10.0, "currency": "EUR",
         "country": "DE", "ip": "10.1.2.3", "mcc": 5411, "channel": 1, "ts_ms": 1_700_000_000_000,
         "instrument_id": 0, "side": 0, "qty": 0, "price": 0.0, "ref_price": 0.0, "is_test": False}


def cluster_overrides(cluster, node):
    return {"cluster": {"servers": list(cluster.urls), "credentials": cluster.credentials, "partitions": P, "node": node, "lease_ttl_s": TTL_S},
            "workers": {"standby": False},          # three nodes on two cores: no spare workers
            "features": shard_keyed_features()}     # a cluster refuses other keys


@contextmanager
def serving(engines):
    """The engines started (start_all), then closed cleanly, leaving no segment."""
    start_all(engines)
    try:
        yield engines
    finally:
        codes = [e.close() for e in engines]       # every engine closed before any assert
        assert codes == [0] * len(engines), [e.output() for e, c in zip(engines, codes) if c]
        assert [shm_entries(e.instance) for e in engines] == [[]] * len(engines)


def start_all(engines):
    """The first node alone (a cold Numba cache compiles the ruleset once), then the rest."""
    engines[0].launch()
    try:
        wait_for(lambda: engines[0].serving() or engines[0].proc.poll() is not None, 900, "first node")
        for e in engines[1:]:
            e.launch()
        wait_for(lambda: all(e.serving() or e.proc.poll() is not None for e in engines), 900, "every node serving")
        for e in engines:
            assert e.serving(), e.output()
    except BaseException:
        for e in engines:
            e.close()
        raise


@pytest.fixture(scope="module")
def nodes(nats3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes")
    # no snapshot round in the module: its objects would trim the subjects (engine.cluster.trim)
    # under the tests that read every fence and record back from the stream
    with serving([EngineProcess(tmp, workers=1, overrides={**cluster_overrides(nats3, f"n{i}"),
                                                           "snapshot": {"interval_s": 86_400}})
                  for i in range(3)]) as engines:
        yield engines


def admin(eng, **req):
    return request(eng.admin_bind, req, 30_000)


def status(cluster):
    out = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                          ",".join(cluster.urls), "--credentials", cluster.credentials, "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


def owned_account(eng, start: int = 77) -> int:
    """The first account id from ``start`` whose partition ``eng`` holds now: a node decides
    only its partitions' events (others are answered NOT_OWNER: tests/cluster/test_routing.py)."""
    mine = wait_for(lambda: admin(eng, cmd="cluster")["cluster"]["owned"], 60, "the node holds a partition")
    ids = np.arange(start, start + 4096, dtype=np.int64)
    return int(ids[np.isin(shard_of(ids, P), mine)][0])


def decide(eng, **fields):
    """``eng``'s decision of EVENT with ``fields``; an account of its partitions unless given."""
    fields.setdefault("account_id", owned_account(eng))
    with Client(eng.endpoint, timeout_ms=20_000, retries=0, transport="json") as c:
        return c.evaluate({**EVENT, **fields}, deadline_ms=10_000)   # ack: sync on a loaded machine


def owner_of(engines, account: int):
    p = int(shard_of(np.array([account], np.int64), P)[0])
    return wait_for(lambda: next((e for e in engines if p in admin(e, cmd="cluster")["cluster"]["owned"]),
                                 None), 60, f"partition {p} held")


def every_partition_held(cluster, nodes=3):
    """`cluster status` once no partition is free, no node holds more than its share (the
    agents' balancing is over: no lease moves while the caller sends to the owners) and every
    holder serves its partitions (a take replays first: slow on a loaded machine)."""
    def settled():
        s = status(cluster)
        owners = [r["owner"] for r in s["leases"]]
        most = share(P, nodes)
        return None not in owners and all(owners.count(o) <= most for o in set(owners)) \
            and all(r["ready"] is not False for r in s["leases"]) and s
    return wait_for(settled, 120, "every partition held and served, none over its node's share")


def all_applied(cluster, nodes, revision):
    ctl = status(cluster)["control"]
    return ctl is not None and all(ctl["nodes"].get(n, {}).get("revision", 0) >= revision for n in nodes)


def test_three_nodes_hold_every_partition(nats3, nodes):
    names = {"n0", "n1", "n2"}

    def balanced():
        st = status(nats3)
        owners = [r["owner"] for r in st["leases"]]
        return None not in owners and set(owners) == names and st
    st = wait_for(balanced, 60, "every partition held, by all three nodes")
    assert st["partitions"] == P
    for e in nodes:
        seg = [n for n in os.listdir("/dev/shm") if n.startswith(f"risk-engine.{e.instance}.")
               and n.endswith(".ownership")]
        assert len(seg) == 1, seg
        assert stat.S_IMODE(os.stat(f"/dev/shm/{seg[0]}").st_mode) == 0o600
        rep = admin(e, cmd="cluster")
        assert rep["ok"] and rep["cluster"]["partitions"] == P
        stats = e.stats()
        assert stats["risk_cluster_partitions"][0]["value"] == P
        assert stats["risk_cluster_lease_agent_up"][0]["value"] == 1
    # every lease held is not yet every partition served: a take replays first (slow when loaded)
    wait_for(lambda: sum(e.stats()["risk_cluster_partitions_owned"][0]["value"] for e in nodes) == P,
             120, "every partition served by its holder")


def test_a_halt_written_through_admin_is_applied_by_every_node(nats3, nodes):
    assert all(decide(e).action != "block" for e in nodes)
    t0 = time.monotonic()
    rep = admin(nodes[1], cmd="halt")
    assert rep["ok"] and rep["global_halt"] is True, rep
    rev = rep["cluster"]["revision"]
    assert "global_halt" in decide(nodes[1]).rules       # the writer applied it before replying
    wait_for(lambda: all_applied(nats3, ["n0", "n1", "n2"], rev), 30, "every node applied the halt")
    took_s = time.monotonic() - t0
    ctl = status(nats3)["control"]
    print(f"halt applied by all 3 nodes {took_s * 1e3:.0f} ms after the admin request (upper bound: "
          f"status polling); per node lag {[round(d['lag_ms'], 1) for d in ctl['nodes'].values()]} ms")
    text = subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                           ",".join(nats3.urls), "--credentials", nats3.credentials], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert f"last change at revision {rev}; 3 of 3 node(s) applied it" in text.stdout, text.stdout
    for e in nodes:
        d = decide(e)
        assert d.action == "block" and "global_halt" in d.rules, (e.instance, d)
    rep = admin(nodes[2], cmd="resume")
    assert rep["ok"] and rep["global_halt"] is False
    wait_for(lambda: all_applied(nats3, ["n0", "n1", "n2"], rep["cluster"]["revision"]), 30, "resume")
    assert all("global_halt" not in decide(e).rules for e in nodes)


def test_a_list_add_is_applied_everywhere(nats3, nodes):
    rep = admin(nodes[0], cmd="list-add", name="blocked_ips", values=["10.66.0.1"])
    assert rep["ok"], rep
    wait_for(lambda: all_applied(nats3, ["n0", "n1", "n2"], rep["cluster"]["revision"]), 30, "list-add")
    for e in nodes:
        shown = admin(e, cmd="list-show", name="blocked_ips")
        assert "10.66.0.1" in shown["values"] and shown["count"] == rep["count"], shown
        assert "blocked_ip" in decide(e, ip="10.66.0.1").rules
    # a second writer on another node starts from the cluster's set, not its own
    rep2 = admin(nodes[2], cmd="list-add", name="blocked_ips", values=["10.66.0.2"])
    assert rep2["ok"] and rep2["count"] == rep["count"] + 1


def test_a_bad_admin_input_is_refused_with_its_code_and_nothing_reaches_kv(nats3, nodes):
    before = status(nats3)["control"]["revision"]
    cases = [({"cmd": "list-add", "name": "blocked_ips", "values": ["300.1.1.1"]}, "BAD_LIST"),
             ({"cmd": "list-add", "name": "nope", "values": ["1.2.3.4"]}, "UNKNOWN_LIST"),
             ({"cmd": "set-state", "name": "account_state", "key": -1, "state": "HALTED"}, "BAD_ARGUMENT"),
             ({"cmd": "set-state", "name": "account_state", "key": 5, "state": "SLEEPY"}, "BAD_ARGUMENT"),
             ({"cmd": "halt", "now": True}, "BAD_ARGUMENT")]
    for req, code in cases:
        rep = admin(nodes[0], **req)
        assert not rep["ok"] and rep["error"]["code"] == code, (req, rep)
    time.sleep(1.0)                 # a write would have reached the leader by now
    assert status(nats3)["control"]["revision"] == before


def test_a_late_node_joins_at_the_current_state_and_a_stopped_node_frees_everything(nats3, nodes, tmp_path):
    ids = np.arange(4242, 4242 + 4096, dtype=np.int64)
    firsts = [int(ids[shard_of(ids, P) == p][0]) for p in range(P)]   # one account per partition
    for acct in firsts:
        rep = admin(nodes[0], cmd="set-state", name="account_state", key=acct, state="HALTED")
        assert rep["ok"], rep
    rep = admin(nodes[0], cmd="halt")
    assert rep["ok"]
    try:
        late = EngineProcess(tmp_path, workers=1, overrides=cluster_overrides(nats3, "n3"))
        start_all([late])
        try:
            assert "joined the control plane" in late.output()
            me = admin(late, cmd="cluster")["cluster"]
            assert me["control"]["revision"] >= rep["cluster"]["revision"], me
            wait_for(lambda: any(r["owner"] == "n3" for r in status(nats3)["leases"]), 60,
                     "the late node takes a share")
            assert "global_halt" in decide(late).rules
            acct = owned_account(late, 4242)            # the first of its partitions' halted ones
            assert acct in firsts and "account_halted" in decide(late, account_id=acct).rules
            assert "10.66.0.1" in admin(late, cmd="list-show", name="blocked_ips")["values"]
        finally:
            assert late.close() == 0, late.output()
        assert shm_entries(late.instance) == []
        st = wait_for(lambda: (s := status(nats3)) and
                      all(r["owner"] != "n3" for r in s["leases"]) and s, 30, "n3's leases freed")
        assert "n3" not in st["control"]["nodes"]
    finally:
        assert admin(nodes[0], cmd="resume")["ok"]


def test_a_node_whose_servers_never_answer_fails_to_start_with_one_line(tmp_path):
    url = f"nats://127.0.0.1:{free_port()}"            # nothing listens there
    eng = EngineProcess(tmp_path, workers=1, overrides=cluster_overrides(
        SimpleNamespace(urls=[url], credentials=None), "lost"))   # loopback: no credentials needed
    try:
        eng.launch()
        assert eng.proc.wait(900) == 2, eng.output()
        out = eng.output()
        assert (f"risk-engine: cannot start: cluster: servers={url}: no NATS server answered "
                f"within 30 s") in out, out
        assert "Traceback" not in out and "risk-engine: serving" not in out
        assert shm_entries(eng.instance) == []
    finally:
        eng.close()


def test_a_hostile_value_in_the_control_bucket_is_refused_by_every_node(nats3, nodes):
    """Whoever can write to NATS can write the bucket: every value is checked like an admin
    request before it is applied; a bad one is counted and logged, the node keeps serving."""
    every_partition_held(nats3)          # balanced first: the owners asked below stay so
    before = [admin(e, cmd="cluster")["cluster"]["control"]["errors"] for e in nodes]
    c = ControlClient(nats3.urls, "hostile", 3, 20.0, credentials=nats3.credentials).start()
    try:
        # one per key: the bucket keeps one (history 1), a watch behind sees a key's last only
        bad = [("list.deep", b"[" * 5000 + b"]" * 5000), ("halt", b'{"on":"yes"}'), ("list.nope", b'{"name":"nope","values":[1]}'),
               ("state.account_state.i1", b'{"name":"account_state","key":true,"state":"HALTED"}'),
               ("state.account_state.i2", b'{"name":"account_state","key":2,"state":"SLEEPY"}')]
        for key, value in bad:
            assert c.write(key, value) is not None
        last = c.write("list.blocked_ips", b'{"name":"blocked_ips","values":[-1]}')
    finally:
        c.close()
    for e, n0 in zip(nodes, before):
        me = wait_for(lambda: (m := admin(e, cmd="cluster")["cluster"])["control"]["revision"] >= last and m,
                      30, "every node has seen the hostile values")
        assert me["control"]["errors"] == n0 + len(bad) + 1, me
        assert "global_halt" not in decide(e).rules
        assert admin(e, cmd="list-show", name="blocked_ips")["ok"]
    for acct in (1, 2):                  # the hostile states' accounts, asked of their owners
        assert "account_halted" not in decide(owner_of(nodes, acct), account_id=acct).rules
    rep = admin(nodes[0], cmd="list-add", name="blocked_ips", values=["10.66.0.3"])
    assert rep["error"]["code"] == "CLUSTER_VALUE_CORRUPT", rep
    rep = admin(nodes[0], cmd="list-replace", name="blocked_ips", values=["10.66.0.1", "10.66.0.2"])
    assert rep["ok"] and rep["count"] == 2, rep


def test_owners_fence_before_serving_and_publish_what_they_decide(nats3, nodes):
    """serve runs the tailer: every partition's subject holds its current owner's fence (taken
    before the table served it), and a decision made by a partition's owner reaches that
    subject from that owner, checked by the replay reader."""
    by_name = {f"n{i}": e for i, e in enumerate(nodes)}
    schema = load_config(nodes[0].config_path).schema
    st = every_partition_held(nats3)
    sent = {}                                        # account -> (partition, owner, amount)
    for k in range(9001, 9001 + 3 * P):
        p = partition_of({"account_id": k}, "account_id", P)
        if p in {v[0] for v in sent.values()}:
            continue
        owner = st["leases"][p]["owner"]
        amount = float(k % 1000) + 0.25
        assert decide(by_name[owner], account_id=k, amount=amount).action in ("allow", "review", "block")
        sent[k] = (p, owner, amount)

    def published():
        msgs = stream_messages(nats3, schema)
        got = {int(r["event"]["account_id"]): (p, m.node, float(r["event"]["amount"]))
               for p, ms in msgs.items() for m in ms if m.kind == "rec" for r in m.records}
        return all(got.get(k) == v for k, v in sent.items()) and msgs
    msgs = wait_for(published, 60, "every decision published by its owner")
    for p in range(P):
        fences = [m for m in msgs[p] if m.kind == "fence"]
        assert fences, p                              # owners fence before they serve
        recs = [m for m in msgs[p] if m.kind == "rec"]
        assert all(any(f.stream_seq < m.stream_seq and f.node == m.node for f in fences) for m in recs)
    for e in nodes:
        rep = {r["what"]: r["value"] for r in e.stats()["risk_cluster_replication"]}
        assert rep["fences"] >= 1 and rep["errors"] == 0, rep


def stream_messages(cluster, schema):
    """{partition: its messages} of the replication stream, each checked by the replay reader."""
    async def read():
        nc = await nats_client.connect(cluster.urls, **auth_options(cluster.credentials), connect_timeout=2)
        try:
            log = ReplicationLog(nc.jetstream(timeout=5.0), "reader", schema.dtype, "account_id", P)
            return {p: [m async for m in log.replay(p)] for p in range(P)}
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(read(), 60))


def feature_rows(eng, p):
    """Partition p's rows in a running engine's shared feature tables: attached, copied
    under their slot locks (engine.cluster.partstate), detached."""
    seg = next(n for n in shm_entries(eng.instance) if n.endswith(".ownership"))
    store = FeatureStore(load_config(eng.config_path), int(seg.split(".")[2]), create=False)
    try:
        return PartitionState(store.fs, None, P).export(p)
    finally:
        store.close()


def test_a_node_taking_partitions_restores_their_features_from_the_stream(nats3, nodes, tmp_path):
    """Decisions on each partition's owner, published; a fourth node joins and takes a share
    (fence, snapshot object or none, replay): for the accounts decided, every feature row of a
    partition it took equals, bit for bit, the row of the owner that decided their events, and
    each account's event count equals the number of events sent."""
    by_name = {f"n{i}": e for i, e in enumerate(nodes)}
    schema = load_config(nodes[0].config_path).schema
    st = every_partition_held(nats3)
    sent = {}                                        # account -> (partition, owner, events)
    for k in range(7_000_001, 7_000_001 + 4 * P):
        p = partition_of({"account_id": k}, "account_id", P)
        owner, n = st["leases"][p]["owner"], 1 + k % 3
        for i in range(n):
            decide(by_name[owner], account_id=k, amount=float(i + k % 50) + 0.5)
        sent[k] = (p, owner, n)

    def published():
        got = {}
        for ms in stream_messages(nats3, schema).values():
            for r in (r for m in ms if m.kind == "rec" for r in m.records):
                got[int(r["event"]["account_id"])] = got.get(int(r["event"]["account_id"]), 0) + 1
        return all(got.get(k) == n for k, (_, _, n) in sent.items())
    wait_for(published, 60, "every decision published")

    late = EngineProcess(tmp_path, workers=1, overrides=cluster_overrides(nats3, "n4"))
    start_all([late])
    try:
        owned = wait_for(lambda: admin(late, cmd="cluster")["cluster"]["owned"], 60, "n4 takes a share")
        checked = 0
        for p in owned:
            mine = feature_rows(late, p)
            theirs = {}
            for k, (q, owner, n) in sent.items():
                if q != p:
                    continue
                if owner not in theirs:
                    theirs[owner] = feature_rows(by_name[owner], p)
                for name, rows in mine.items():
                    a = rows[rows[:, 0] == k]
                    b = theirs[owner][name][theirs[owner][name][:, 0] == k]
                    assert len(a) == 1 and a.tobytes() == b.tobytes(), (p, k, name)
                count = mine["ft_txn_count_1m"][mine["ft_txn_count_1m"][:, 0] == k][0]
                assert int(count[2:].view(np.uint32).sum()) == n, (p, k)       # the recount
                checked += 1
        assert checked > 0
        taken = {r["what"]: r["value"] for r in late.stats()["risk_cluster_replication"]}["taken"]
        assert taken >= len(owned) and "taken at revision" in late.output(), late.output()
    finally:
        assert late.close() == 0, late.output()
    assert shm_entries(late.instance) == []
