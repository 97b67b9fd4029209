"""Issue 24's failure table, the rows one engine node's surroundings cause (docs/CLUSTER.md,
"Failures"): the nodes of tests/cluster/test_faults.py (f0, f1: 8 partitions, TTL 4 s,
ack: sync) on three NATS servers, all inside a network namespace this module creates (the
test process enters it, so every server, engine and client runs there; deleted afterwards).
f0 runs in a cgroup of its own (its traffic is told apart by it) with its journal on a
small tmpfs of its own.

- A network split: an iptables rule in the namespace rejects f0's packets to the NATS
  servers' client ports (REJECT with a TCP reset: f0 is cut off from every server, while
  clients still reach its ingress). f0 stops serving at its lease's deadline (TTL - TTL/4
  after its last renewal): what it evaluated meanwhile was held (ack: sync) and answered
  TIMEOUT, never as a decision; f1 takes its partitions once the leases lapse; after the
  rule goes (the split heals) f0's late records are refused by f1's fences and counted
  (risk_replication_failed_total), and f0 rejoins: it holds partitions again. Every
  acknowledged decision is in the stream; no request is decided by both nodes. f0's log
  says its replication connection went and came back in one line each.
- A disk: f0's journal tmpfs is filled by a file. Once its current segments are used, f0
  answers its partitions' events JOURNAL_UNAVAILABLE (journal.on_unavailable, block:
  nothing evaluated, journaled or published); a TTL later it hands its partitions over to f1
  one at a time (engine.cluster.drain) and takes none: a cluster-mode client's requests for
  them are decided by f1 within HANDOVER_BOUND_S; nothing acknowledged is missing from the
  stream, and each decision is in the journal of the node that made it. The file deleted,
  f0's idle worker finds its journal working again and f0 takes its share back.

Two engines start: slow. Needs root (netns, iptables, cgroup, mount)."""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq

from ingress.client import Client, RequestError
from ingress.cluster_client import ClusterClient
from engine.journal_reader import iter_merged
from shm.types import ErrorCode
from tests.cluster.agentproc import wait_for
from tests.cluster.test_acksync import RECORD, stream_records
from bench.cluster_failover import client_load
from tests.cluster.test_faults import (P, TTL_S, accounts_in, node_pair, not_owner, replication,
                                       replication_failed, split)
from tests.cluster.test_node import EVENT, every_partition_held, serving
from tests.cluster.test_routing import eng_schema, journaled, owned
from tests.engine.test_journal import fill_disk, mounted_tmpfs
from tests.engine.test_metrics import scrape, value

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
# a's partitions decided by b after its disk filled: the hand-over wait (a TTL plus two ticks:
# engine.cluster.drain), then one take-over at a time (fence, replay, local snapshot: about a
# second each on a quiet machine), with room for a loaded one
HANDOVER_BOUND_S = TTL_S * 1.25 + 4 * 8.0

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    """This thread into the network namespace ``fd`` (threads started later inherit it)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@pytest.fixture(scope="module", autouse=True)
def netns():
    """A network namespace of this module's (loopback up), entered by the test process
    before anything else starts; left and deleted afterwards."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("iptables")):
        pytest.skip("a network namespace, iptables and a cgroup need root, ip and iptables")
    name = "rf" + uuid.uuid4().hex[:10]
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        yield name
    finally:
        _setns(host)
        os.close(host)
        subprocess.run(["ip", "netns", "del", name], check=True, timeout=30)
    assert not Path(f"/run/netns/{name}").exists()


@pytest.fixture(scope="module")
def zctx(netns):
    """A ZeroMQ context made inside the namespace: a network namespace is per thread, and the
    process's shared context (zmq.Context.instance()) may have started its I/O threads in the
    host's namespace for an earlier module, where these engines' ports do not exist."""
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.term()


@pytest.fixture(scope="module")
def nats3(netns, nats3):
    """The conftest's three servers, started inside the namespace."""
    return nats3


def cgroup2_root() -> str | None:
    with open("/proc/self/mounts") as f:
        return next((ln.split()[1] for ln in f if ln.split()[2] == "cgroup2"), None)


@pytest.fixture(scope="module")
def cgroup():
    """(directory, path for iptables' cgroup match) of a cgroup v2 of this module's; removed
    afterwards (what is left in it, f0's processes only, killed first)."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    name = "risk-engine-" + uuid.uuid4().hex[:10]
    d = Path(root) / name
    d.mkdir()
    try:
        yield d, "/" + name
    finally:
        t_end = time.monotonic() + 30
        while (pids := (d / "cgroup.procs").read_text().split()) and time.monotonic() < t_end:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.2)
        d.rmdir()


@pytest.fixture(scope="module")
def jdisk(tmp_path_factory):
    """f0's journal file system: a 16 MiB tmpfs (0700), unmounted afterwards."""
    with mounted_tmpfs(tmp_path_factory.mktemp("jdisk") / "tmpfs", "16m,mode=0700") as mnt:
        yield mnt


@pytest.fixture(scope="module")
def pair(nats3, cgroup, jdisk, tmp_path_factory):
    # f0's shell joins the cgroup and then becomes the engine: every process of f0 is in it
    # from the start (iptables matches a socket by the cgroup of the process that made it)
    join = ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup[0]))
    # no snapshot object, so no subject is trimmed: the stream holds every record the checks
    # look for (a run over the 60 s default trimmed the first decisions away)
    engines = node_pair(nats3, tmp_path_factory.mktemp("nodefaults"), prefix=join,
                        journal={"dir": str(jdisk / "journal"), "segment_bytes": 1 << 16},
                        snapshot={"interval_s": 86_400})
    with serving(engines):
        yield engines


@contextlib.contextmanager
def cut_off(netns: str, cgroup_path: str, ports: list[int]):
    """The namespace rejects (TCP reset) every packet of the cgroup's processes to ``ports``
    while the block runs."""
    rule = ["OUTPUT", "-p", "tcp", "-m", "cgroup", "--path", cgroup_path, "-m", "multiport",
            "--dports", ",".join(map(str, ports)), "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-A", *rule], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "iptables", "-D", *rule], check=True, timeout=30)


def in_stream(cluster) -> tuple[dict[float, int], set[tuple[int, int]]]:
    """(amount -> account, {(client_id, request_id)}) of every record in the stream."""
    recs = [r for r in stream_records(cluster, eng_schema()).values() if r is not None]
    r = np.concatenate(recs) if recs else np.zeros(0, RECORD)
    return (dict(zip(r["event"]["amount"].tolist(), r["event"]["account_id"].tolist())),
            set(zip(r["client_id"].tolist(), r["request_id"].tolist())))


def test_a_node_cut_off_from_nats_stops_serving_and_rejoins_once_the_split_heals(netns, nats3, pair, cgroup, zctx):
    a, b = pair
    wait_for(lambda: split(a, b), 120, "both nodes hold partitions, every partition held")
    old = sorted(owned(a))
    accts = accounts_in(old, 20, start=30_000)
    cid = 0x5C5C
    failed0 = replication_failed(a)
    acked, held, late_ids, rid, overloaded = {}, [], set(), 0, 0
    with ClusterClient(nats3.urls, timeout_ms=15_000, retries=3, deadline_ms=10_000, client_id=cid,
                       credentials=nats3.client_credentials, context=zctx) as cc, \
            client_load(cc, 7_000_000, acked=acked) as (ok, failed):
        wait_for(lambda: ok[0] >= 50, 60, "load running")
        with cut_off(netns, cgroup[1], [s.port for s in nats3.servers]):
            t_cut = time.monotonic()
            # a goes on evaluating its partitions' events until its lease's deadline: each is
            # held for a replication that cannot come and answered TIMEOUT (ack: sync)
            with Client(a.endpoint, timeout_ms=5000, retries=0, transport="binary", client_id=cid + 1,
                        context=zctx) as c:
                while time.monotonic() < t_cut + 60:
                    rid += 1                    # the client's request ids count from 1
                    try:
                        if not_owner(c, accts[rid % len(accts)], held):
                            break
                        late_ids.add((cid + 1, rid))
                    except RequestError as e:   # a loaded machine: the worker behind, nothing
                        if e.code != ErrorCode.OVERLOADED:      # evaluated
                            raise
                        overloaded += 1
            t_stop, late = time.monotonic() - t_cut, len(late_ids)
            assert t_stop < 60 and len(held) == late, f"{late - len(held)} of {late} answered as decisions"
            dropped = set()

            def b_holds_all():
                o = owned(b)
                dropped.update(set(range(P)) - set(old) - o)     # b's own, released meanwhile
                return o == set(range(P))
            wait_for(b_holds_all, 60, "b holds every partition", step_s=0.05)
            t_taken = time.monotonic() - t_cut
            n = ok[0]
            wait_for(lambda: ok[0] >= n + 100, 120, "load answered by b while a is cut off")
        t_heal = time.monotonic()
        wait_for(lambda: split(a, b), 120, "a rejoins: both hold partitions again", step_s=0.1)
        t_rejoin = time.monotonic() - t_heal
        n = ok[0]
        wait_for(lambda: ok[0] >= n + 100, 120, "load answered after the split healed")
    # the late records reach the stream only to be refused by b's fences: their held replies
    # resolve REPLICATION_FAILED (answered TIMEOUT long before), counted
    wait_for(lambda: replication_failed(a) - failed0 >= late, 60, "a's held replies counted")
    print(f"split: a (f0) cut off from NATS: it answered NOT_OWNER {t_stop:.2f} s after the cut "
          f"(TTL - TTL/4 = {TTL_S * 0.75:g} s), {late} request(s) evaluated meanwhile, each answered "
          f"TIMEOUT ({overloaded} OVERLOADED); b held every partition after {t_taken:.2f} s; "
          f"healed, a held partitions again after {t_rejoin:.2f} s; load: {ok[0]} decided, "
          f"{len(failed)} failed {[f[-60:] for f in failed]}, {cc.redirects} redirect(s); "
          f"a: {replication(a)}, {replication_failed(a) - failed0} REPLICATION_FAILED")
    assert t_stop <= TTL_S - TTL_S / 4 + 1.0      # the deadline, plus one probe round trip
    # b kept its own partitions while it took a's (before the agent counted a lapsed node out
    # of the share, b released its own down to half, for nobody to take: every partition held
    # only 15.5 s after the cut instead of 5.9 s)
    assert dropped == set(), f"b released {sorted(dropped)} while a was cut off"
    # a request to a during the cut: TIMEOUT (held, not a decision); NOT_OWNER: not evaluated
    # (client_load lists a decision's error code, and a refusal as "RequestError: CODE ...")
    assert all(f == "TIMEOUT" or "NOT_OWNER" in f or "OVERLOADED" in f for f in failed), failed
    stream, published = in_stream(nats3)
    missing = [amt for amt, acct in acked.items() if stream.get(amt) != acct]
    assert missing == [], f"{len(missing)} acknowledged decisions not in the stream: {missing[:10]}"
    ours = {cid, cid + 1}
    a_ids = {(c_, r) for c_, r, _ in journaled(a) if c_ in ours}
    b_ids = {(c_, r) for c_, r, _ in journaled(b) if c_ in ours}
    assert not a_ids & b_ids                      # no request decided by both nodes
    assert late_ids <= a_ids
    assert not late_ids & published               # refused by b's fences
    # a's log: its replication connection's cut and heal, one line each, not nats-py's
    # traceback per reconnect attempt (every 0.25 s before: shm.runtime.nats_log)
    log = a.output()
    assert "nats: encountered error" not in log
    down = [ln for ln in log.splitlines() if "risk-engine: cluster: replication: disconnected from NATS" in ln]
    up = [ln for ln in log.splitlines() if "risk-engine: cluster: replication: reconnected to NATS after" in ln]
    print(f"split: a's log: {down} {up}")
    assert len(down) == 1 and len(up) == 1, (down, up)


def test_a_full_journal_disk_hands_the_partitions_over_and_loses_no_acknowledged_decision(nats3, pair, jdisk, zctx):
    a, b = pair
    every_partition_held(nats3, nodes=2)           # the balancing after the split is over
    wait_for(lambda: split(a, b), 120, "each node serves its leases (take-overs done)")
    mine = owned(a)
    accts = accounts_in(mine, 50, start=60_000)
    acked, refused, k = {}, [], 0
    by = {}                                         # amount -> "a" | "b": who decided it

    def send(c, n, node="a") -> int:
        """n events to a's partitions, unique amounts: how many were refused
        JOURNAL_UNAVAILABLE (any other error raises)."""
        nonlocal k
        evs = [{**EVENT, "account_id": accts[(k + i) % len(accts)], "amount": 8_000_000 + k + i + 0.25}
               for i in range(n)]
        k += n
        out = 0
        for ev, d in zip(evs, c.evaluate_batch(evs)):
            if d.error is None:
                acked[ev["amount"]] = ev["account_id"]
                by[ev["amount"]] = node
            else:
                assert d.error == "JOURNAL_UNAVAILABLE" and d.action == "block", d
                refused.append(ev["amount"])
                out += 1
        return out
    filler = fill_disk(jdisk)
    try:
        with Client(a.endpoint, timeout_ms=20_000, retries=0, transport="binary", context=zctx, client_id=0x5D5D,
                    deadline_ms=10_000) as c:
            # the segments allocated before the disk filled take records until a batch does
            # not fit, then single events until one does not (bounded: 64 KiB segments)
            for n in (50, 1):
                t_end = time.monotonic() + 120
                while not send(c, n) and time.monotonic() < t_end:
                    pass
            assert refused, f"{k} events decided on a full disk within the bound"
            full_at, t_full = len(acked), time.monotonic()
            assert value(scrape(a.metrics_url), "risk_journal_unavailable", worker="0") == 1
        # a hands its partitions over (a TTL after its first refusal, then one take-over at a
        # time): a cluster-mode client sending to them is answered JOURNAL_UNAVAILABLE by a,
        # then (NOT_OWNER followed) decided by b
        with ClusterClient(nats3.urls, timeout_ms=20_000, retries=3, deadline_ms=10_000, client_id=0x5D5F,
                           credentials=nats3.client_credentials, context=zctx) as cc:
            t_end, streak = t_full + HANDOVER_BOUND_S, 0
            while time.monotonic() < t_end and not (streak >= 20 and mine <= owned(b)):
                streak = 0 if send(cc, 1, node="b") else streak + 1     # a decides nothing now
            t_served = time.monotonic() - t_full
            assert streak >= 20 and mine <= owned(b), \
                f"a's partitions not served by b within {HANDOVER_BOUND_S:g} s of the full disk"
            assert owned(a) == set(), owned(a)      # it takes nothing while its journal is full
            assert value(scrape(a.metrics_url), "risk_journal_unavailable", worker="0") == 1
            by_b = sum(1 for v in by.values() if v == "b")
    finally:
        os.unlink(filler)
    # its journal works again (the idle worker retries it): a takes its share back from b
    wait_for(lambda: owned(a) and len(owned(b)) <= P // 2, 120, "a holds partitions again once the disk has room")
    back = sorted(owned(a))
    with Client(a.endpoint, timeout_ms=20_000, retries=0, transport="binary", context=zctx, client_id=0x5D5E,
                deadline_ms=10_000) as c:
        acct = accounts_in(back, 1, start=90_000)[0]
        wait_for(lambda: c.evaluate({**EVENT, "account_id": acct, "amount": 8_900_000.25}).error is None,
                 60, "a decides again once the disk has room")
    stream, _ = in_stream(nats3)
    print(f"disk: a's journal tmpfs full: {full_at} events decided in the segments already "
          f"allocated, then {len(refused)} answered JOURNAL_UNAVAILABLE; a's {len(mine)} partition(s) "
          f"served by b {t_served:.2f} s after the first refusal (bound {HANDOVER_BOUND_S:g} s), "
          f"{by_b} decided there; freed, a held {len(back)} again and decided")
    missing = [amt for amt, acct in acked.items() if stream.get(amt) != acct]
    assert missing == [], f"{len(missing)} acknowledged decisions not in the stream: {missing[:10]}"
    schema = eng_schema()
    in_journal = {amt for recs, _ in iter_merged(str(jdisk / "journal"), schema.dtype, schema.hash)
                  for amt in recs["event"]["amount"].tolist()}
    b_journal = {amt for recs, _ in iter_merged(b.raw["journal"]["dir"], schema.dtype, schema.hash)
                 for amt in recs["event"]["amount"].tolist()}
    assert {amt for amt, n in by.items() if n == "a"} <= in_journal
    assert {amt for amt, n in by.items() if n == "b"} <= b_journal
    assert acked.keys() <= in_journal | b_journal and not set(refused) & (in_journal | b_journal | set(stream))
