"""The cluster's ruleset value and rule file objects (engine/cluster/ruleset.py) as a node
checks them before anything reaches its compiler, on the module's three NATS servers: every
hostile or corrupt value or object is refused with what is wrong, and a node's ruleset plane
(engine/cluster/ruleset_apply.py) counts it, reports it as not applied and never starts a
reload with it. (Real engine nodes applying a ruleset: tests/cluster/test_ruleset.py.)"""
from __future__ import annotations

import hashlib
import json
import os
import time
import types
import uuid

import pytest

from engine.cluster import ruleset as rsv
from engine.cluster.control import ControlClient, encode
from engine.cluster.jsopen import open_object_store
from engine.cluster.ruleset_apply import RulesetPlane
from rules.loader import MAX_RULE_FILE_BYTES

GOOD = [("payments.yaml", "ruleset: payments\nversion: 7\nrules: []\n"),
        ("extra.yaml", "ruleset: extra\nversion: 1\nrules: []\n")]


def good_value() -> dict:
    return {**rsv.make_value("payments@7+extra@1", GOOD), "by": "n0", "time_ns": 1}


def variant(**changes) -> dict:
    v = json.loads(json.dumps(good_value()))
    for path, new in changes.items():
        target, *rest = path.split("__")
        if rest:
            i, k = rest
            v[target][int(i)][k] = new
        else:
            v[target] = new
    return v


def rehashed(v: dict) -> dict:
    """``v`` with its hash made right again, so the check under test is the one that fails."""
    v["hash"] = rsv.content_hash((f["name"], f["sha256"]) for f in v["files"])
    return v


HOSTILE = {
    "not an object": [1, 2],
    "an unknown key": {**good_value(), "exec": "rm -rf /"},
    "no files": variant(files=[]),
    "65 files": variant(files=good_value()["files"][:1] * 65),
    "a path as a name": rehashed(variant(files__0__name="../../etc/cron.d/x")),
    "a hidden name": rehashed(variant(files__0__name=".bashrc")),
    "a slash in a name": rehashed(variant(files__0__name="a/b.yaml")),
    "two files of one name": rehashed(variant(files__1__name="payments.yaml")),
    "a size over the limit": variant(files__0__size=MAX_RULE_FILE_BYTES + 1),
    "a bool size": variant(files__0__size=True),
    "a float size": variant(files__0__size=10.0),
    "an object not named by its sha256": variant(files__0__object="rf." + "0" * 64),
    "a sha256 that is not hex": rehashed(variant(files__0__sha256="Z" * 64)),
    "a file with an extra key": variant(files__0__code="__import__('os')"),
    "a hash that is not the files'": variant(hash="0" * 64),
    "a label with a newline": variant(label="payments@7\nroot"),
    "a label of a number": variant(label=7),
    "a time_ns of a string": variant(time_ns="now"),
}


def test_a_good_value_passes_and_every_hostile_one_is_refused():
    v = rsv.check_value(good_value())
    assert [f.name for f in v.files] == ["payments.yaml", "extra.yaml"] and v.label == "payments@7+extra@1"
    for why, doc in HOSTILE.items():
        with pytest.raises(ValueError):
            rsv.check_value(doc)
            pytest.fail(f"accepted: {why}")
    with pytest.raises(ValueError, match="two rule files named"):
        rsv.make_value("x@1", [("a.yaml", "x"), ("a.yaml", "y")])


def test_the_hash_of_a_served_generation_equals_the_values():
    spec = {"origin_files": ["/etc/risk/payments.yaml", "/tmp/extra.yaml"],
            "sha256": [hashlib.sha256(t.encode()).hexdigest() for _, t in GOOD]}
    assert rsv.spec_hash(spec) == good_value()["hash"]
    assert rsv.spec_hash({"origin_files": spec["origin_files"], "texts": [t for _, t in GOOD]}) == good_value()["hash"]
    assert rsv.spec_hash({"origin_files": spec["origin_files"][::-1], "sha256": spec["sha256"][::-1]}) \
        != good_value()["hash"]                  # load order is part of a ruleset


class Recorder:
    """The single engine's reload as the plane calls it, recording the calls (a real
    supervisor's is exercised by tests/cluster/test_ruleset.py)."""

    def __init__(self):
        self.calls, self.job, self.switch, self.generation = [], None, None, 1
        self.specs = {1: {"label": "old@1", "origin_files": ["/x/old.yaml"], "sha256": ["0" * 64]}}

    def reload(self, files, previous=False, on_done=None):
        self.calls.append(files)
        return None


@pytest.fixture(scope="module")
def client(nats3):
    c = ControlClient(nats3.urls, "probe", 3, 20.0, bucket="rsv" + uuid.uuid4().hex[:8],
                      credentials=nats3.credentials).start()
    try:
        yield c
    finally:
        c.close()


def put(client, name: str, data: bytes) -> None:
    async def go():
        store = await rsv.open_store(client.jetstream(), 3)
        await store.put(name, data)
    client.call(go(), 30)


def plane_fed(client, tmp_path, rev: int, doc) -> tuple[RulesetPlane, Recorder, list]:
    logged: list = []
    sup = types.SimpleNamespace(rulesets=Recorder(), run_dir=tmp_path, log=logged.append)
    plane = RulesetPlane(sup, client, "probe")
    try:
        plane.seen(rev, doc)
    except ValueError:
        pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        plane.poll()
        if plane.fetch is None and (plane.failed_rev >= rev or sup.rulesets.calls):
            break
        time.sleep(0.02)
    return plane, sup.rulesets, logged


def test_corrupt_or_missing_objects_and_hostile_values_are_refused_by_a_node_and_nothing_applied(client, tmp_path):
    for name, text in GOOD:
        put(client, rsv.object_name(hashlib.sha256(text.encode()).hexdigest()), text.encode())
    missing = {**rsv.make_value("gone@1", [("gone.yaml", "ruleset: gone " + uuid.uuid4().hex)]),
               "by": "x", "time_ns": 1}
    swapped_text = "ruleset: swapped\nversion: 1\nrules: []\n"      # same size, other bytes
    other = "ruleset: swappet\nversion: 1\nrules: []\n"
    swapped = {**rsv.make_value("swapped@1", [("s.yaml", swapped_text)]), "by": "x", "time_ns": 1}
    put(client, swapped["files"][0]["object"], other.encode())
    sized = {**rsv.make_value("sized@1", [("z.yaml", "ruleset: sized\n")]), "by": "x", "time_ns": 1}
    put(client, sized["files"][0]["object"], b"ruleset: sized\n\n")
    raw = b"ruleset: \xff\xfe\n"                   # not UTF-8, named by its own digest
    sha = hashlib.sha256(raw).hexdigest()
    binary = {"label": "bin@1", "files": [{"name": "b.yaml", "sha256": sha, "size": len(raw),
                                           "object": rsv.object_name(sha)}],
              "hash": rsv.content_hash([("b.yaml", sha)]), "by": "x", "time_ns": 1}
    put(client, rsv.object_name(sha), raw)
    cases = {"missing object": (missing, "missing from bucket"),
             "swapped bytes": (swapped, "not the file the ruleset value names"),
             "wrong size": (sized, "bytes, the ruleset value says"),
             "not UTF-8": (binary, "not UTF-8"),
             **{f"value: {k}": (v, "a bad ruleset value") for k, v in list(HOSTILE.items())[:6]}}
    for rev, (why, (doc, says)) in enumerate(cases.items(), start=1):
        plane, rulesets, logged = plane_fed(client, tmp_path / str(rev), rev, doc)
        assert rulesets.calls == [], why                       # nothing reached the reload
        assert plane.errors == 1 and plane.failed_rev == rev, why
        rec = plane.record()
        assert says in rec["failure"] and says in logged[-1], (why, rec, logged)
        assert not (tmp_path / str(rev) / "cluster-rules").exists() or \
            not any((tmp_path / str(rev) / "cluster-rules").rglob("*.yaml")), why
        if not why.startswith("value"):
            assert rec["applied"] is False and rec["wanted_revision"] == rev, (why, rec)
    plane, rulesets, _ = plane_fed(client, tmp_path / "good", 99, good_value())
    assert plane.errors == 0 and len(rulesets.calls) == 1, plane.failure
    files = rulesets.calls[0]
    assert [p.rsplit("/", 1)[1] for p in files] == ["payments.yaml", "extra.yaml"]
    assert [open(p).read() for p in files] == [t for _, t in GOOD]
    assert all(oct(os.stat(p).st_mode & 0o777) == "0o600" for p in files)


def test_a_value_of_the_control_bucket_is_within_its_size(client):
    """64 files of the longest names fit one control value many times over."""
    files = [(f"{'n' * 120}{i:03d}.yaml", "x") for i in range(64)]
    assert len(encode(rsv.make_value("l@1" * 300, files))) < 100_000


def test_a_store_just_created_on_three_servers_takes_a_put_at_once(client):
    """An R3 object store answers 'no responders' until its Raft group has a leader: opened
    through open_object_store (rule files, snapshots), the first put right after creation is
    accepted, for each of several stores made here."""
    async def go(bucket):
        store = await open_object_store(client.jetstream(), bucket, 3, "test", 30.0)
        await store.put("first", b"x")
        return (await store.get("first")).data
    for _ in range(6):
        assert client.call(go("os" + uuid.uuid4().hex[:10]), 60) == b"x"
