"""The cluster's ruleset in the control plane with real engine nodes (docs/CLUSTER.md, "Control
plane"): a reload through one node's admin plane is applied by every node (a decision the new
rules change, on each node; the time until all applied is printed); a ruleset value naming a
corrupt object is refused by every node, nothing applied; a node starting later serves the
cluster's ruleset from its first decision; a ruleset that does not compile on one node is
reported there (not applied, counted) while that node keeps serving its previous one.
Engines start in parallel (minutes cold on a loaded machine): slow."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import nats as nats_client
import pytest

from bench.engine_proc import EngineProcess
from engine.admin import request
from engine.cluster import ruleset as rsv
from engine.cluster.control import ControlClient, encode, read_applied
from shm.runtime.nats_auth import auth_options
from tests.cluster.agentproc import REPO, wait_for
from tests.cluster.test_node import admin, cluster_overrides, decide, serving, start_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]   # cold starts and compiles

NAMES = ("n0", "n1", "n2")
PROBE = """ruleset: probe
version: {version}
rules:
  - id: cluster_probe
    when: "amount == 4242.5"
    action: block
    score: 100
    reason: "cluster reload probe"
{extra}"""
LISTED = """  - id: probe_listed
    when: "ip in probe_ips"
    action: block
    score: 100
    reason: "a probe list only some nodes configure"
"""


def overrides(cluster, node: str, rules: list[str], probe_list: bool) -> dict:
    o = cluster_overrides(cluster, node)
    o["cluster"]["lease_ttl_s"] = 4.0   # take-overs on a loaded machine finish inside a TTL
    o["rules"] = {"files": rules}
    if probe_list:                   # a list the late node lacks: a ruleset using it fails there
        o["lists"] = {"probe_ips": {"type": "ipv4"}}
    return o


BASE = """ruleset: base
version: 1
rules:
  - id: huge_amount
    when: "amount >= 1000000000"
    action: block
    score: 100
    reason: "a small ruleset: each new one is a cold kernel compile, minutes on a loaded machine"
"""


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rules")
    (d / "base.yaml").write_text(BASE)
    return d


def configured(rules_dir: Path) -> list[str]:
    return [str(rules_dir / "base.yaml")]


@pytest.fixture(scope="module")
def nodes(nats3, rules_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes")
    with serving([EngineProcess(tmp, workers=1, overrides=overrides(nats3, n, configured(rules_dir), True))
                  for n in NAMES]) as engines:
        yield engines


def reload(eng, files) -> dict:
    return request(eng.admin_bind, {"cmd": "reload", "files": [str(f) for f in files]}, 900_000)


def applied_records(cluster) -> dict:
    async def go():
        nc = await nats_client.connect(cluster.urls, **auth_options(cluster.credentials), connect_timeout=5)
        try:
            return await asyncio.wait_for(read_applied(nc.jetstream(timeout=5.0)), 20)
        finally:
            await nc.close()
    return asyncio.run(go())


def serving_hash(cluster, names, h) -> dict | None:
    st = applied_records(cluster)
    recs = {n: st["nodes"].get(n, {}).get("ruleset") or {} for n in names}
    return st if all(r.get("hash") == h and r.get("applied") for r in recs.values()) else None


def status_text(cluster) -> str:
    return subprocess.run([sys.executable, "-m", "engine.cli", "cluster", "status", "--servers",
                           ",".join(cluster.urls), "--credentials", cluster.credentials], cwd=REPO, capture_output=True, text=True, timeout=60).stdout


def probed(d) -> bool:
    return d.action == "block" and "cluster_probe" in d.rules


def test_a_reload_through_one_node_is_applied_by_every_node(nats3, nodes, rules_dir):
    assert not any(probed(decide(e, amount=4242.5)) for e in nodes)
    probe = rules_dir / "probe.yaml"
    probe.write_text(PROBE.format(version=1, extra=""))
    t0 = time.monotonic()
    rep = reload(nodes[1], [*configured(rules_dir), probe])
    replied_s = time.monotonic() - t0
    assert rep["ok"] and rep["ruleset"] == "base@1+probe@1", rep
    assert rep["cluster"]["node"] == "n1"
    assert probed(decide(nodes[1], amount=4242.5))          # the writer applied it before replying
    st = wait_for(lambda: serving_hash(nats3, NAMES, rep["cluster"]["hash"]), 300,
                  "every node serves the new ruleset", step_s=0.05)
    all_s = time.monotonic() - t0
    print(f"ruleset reload through n1: replied after {replied_s * 1e3:.0f} ms (checked, written, "
          f"applied there); all 3 nodes' records showed it {all_s * 1e3:.0f} ms after the request; "
          f"per node lag {[round(st['nodes'][n]['ruleset']['lag_ms']) for n in NAMES]} ms")
    assert st["ruleset"]["revision"] == rep["cluster"]["revision"]
    for e in nodes:
        assert probed(decide(e, amount=4242.5)), e.instance
        assert not probed(decide(e, amount=4242.0))
        assert e.stats()["risk_cluster_ruleset_applied"][0]["value"] == 1
    assert "3 of 3 node(s) serve it" in status_text(nats3)


def test_a_corrupt_object_or_hostile_value_is_refused_by_every_node_and_nothing_changes(nats3, nodes, rules_dir):
    before = {e.instance: admin(e, cmd="cluster")["cluster"]["ruleset"] for e in nodes}
    gens = {e.instance: admin(e, cmd="status")["generation"] for e in nodes}
    text = PROBE.format(version=3, extra="")
    value = {**rsv.make_value("probe@3", [("probe.yaml", text)]), "by": "hostile", "time_ns": time.time_ns()}
    hostile = [(value, "not the file the ruleset value names"),     # one at a time: a node
               ({**value, "files": [{**value["files"][0], "name": "../x.yaml"}]}, "x.yaml")]   # applies the newest
    c = ControlClient(nats3.urls, "hostile", 3, 20.0, credentials=nats3.credentials).start()
    try:
        async def plant():          # the object named by the text's digest holds other bytes
            store = await rsv.open_store(c.jetstream(), 3)
            await store.put(value["files"][0]["object"], text.replace("4242.5", "4242.6").encode())
        c.call(plant(), 30)
        revs = []
        for i, (doc, says) in enumerate(hostile, start=1):
            revs.append(c.write(rsv.KEY, encode(doc)))
            for e in nodes:
                me = wait_for(lambda: (r := admin(e, cmd="cluster")["cluster"]["ruleset"])["errors"] >=
                              before[e.instance]["errors"] + i and r, 120, f"every node refused {says}")
                assert me["applied"] is False and says in me["failure"], me
                assert me["hash"] == before[e.instance]["hash"] and me["revision"] == before[e.instance]["revision"]
                assert admin(e, cmd="status")["generation"] == gens[e.instance]
                assert probed(decide(e, amount=4242.5)) and not probed(decide(e, amount=4242.6))
                assert e.stats()["risk_cluster_ruleset_applied"][0]["value"] == 0
                assert says in e.output()
    finally:
        c.close()
    assert "NOT APPLIED" in status_text(nats3)
    rep = reload(nodes[0], [*configured(rules_dir), rules_dir / "probe.yaml"])   # the good one again
    assert rep["ok"] and rep["cluster"]["revision"] > max(revs), rep
    wait_for(lambda: serving_hash(nats3, NAMES, rep["cluster"]["hash"]), 300, "the good one again")
    assert {e.instance: admin(e, cmd="status")["generation"] for e in nodes} == gens   # same hash: no reload


def test_a_late_node_serves_the_clusters_ruleset_and_one_that_fails_there_is_reported(nats3, nodes, rules_dir, tmp_path):
    late = EngineProcess(tmp_path, workers=1, overrides=overrides(nats3, "n3", configured(rules_dir), False))
    try:
        start_all([late])
        assert "serving the cluster's ruleset" in late.output()
        # its first take-overs run beside its admin loop: on a loaded machine an answer took over 30 s
        wait_for(lambda: request(late.admin_bind, {"cmd": "cluster"}, 120_000)["cluster"]["owned"], 300,
                 "the late node takes a share")
        assert probed(decide(late, amount=4242.5))              # from its first decision
        probe = rules_dir / "probe.yaml"
        probe.write_text(PROBE.format(version=2, extra=LISTED))
        out = subprocess.run([sys.executable, "-m", "engine.cli", "reload", "--instance", nodes[0].instance,
                              "--rules", *configured(rules_dir), str(probe)], cwd=REPO,
                             capture_output=True, text=True, timeout=900)   # the CLI reloads every node too
        assert out.returncode == 0 and "+probe@2" in out.stdout, out.stdout + out.stderr
        h = applied_records(nats3)["ruleset"]["value"]["hash"]
        wait_for(lambda: serving_hash(nats3, NAMES, h), 300, "n0-n2 serve v2")
        me = wait_for(lambda: (r := admin(late, cmd="cluster")["cluster"]["ruleset"])["failure"] and r,
                      300, "the late node reports v2 not applied")
        assert me["applied"] is False and "probe_ips" in me["failure"], me
        assert late.stats()["risk_cluster_ruleset_applied"][0]["value"] == 0
        assert late.stats()["risk_cluster_ruleset_errors"][0]["value"] >= 1
        assert probed(decide(late, amount=4242.5))              # still its previous ruleset (probe@1)
        assert admin(late, cmd="status")["ruleset"] == "base@1+probe@1"
        text = status_text(nats3)
        assert "3 of 4 node(s) serve it" in text and "n3" in text and "NOT APPLIED" in text, text
    finally:
        late.close()
        probe = rules_dir / "probe.yaml"
        probe.write_text(PROBE.format(version=1, extra=""))
