"""Engine nodes for ``bench.cluster``: a single engine or three cluster nodes, started and
stopped as one set, their partitions, and the CPU time of their processes.

    with node_set(tmp, nats_urls, ack="sync") as nodes:   # nats_urls None: one engine alone
        wait_balanced(nodes)                              # every partition held, none over its share
        meter = CpuMeter(nodes, nats)                     # CPU seconds of the engine trees and
        before = meter.read(); ...; meter.delta(before)   # nats-servers between two reads

Every node runs the bundled config with 1 worker, no standby and the features keyed by the
shard key (what a cluster requires; the single engine gets the same features, so both do the
same rule and feature work per decision). Leaving the block closes every node (SIGTERM, then
SIGKILL after a grace period) and removes its segments and run directory, on an exception or
Ctrl-C too.
"""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager

import psutil

from bench.acksync import PARTITIONS
from bench.engine_proc import EngineProcess
from engine.admin_client import request
from engine.cluster.members import share
from engine.cluster.natsserver import NatsCluster
from shm.runtime.config import portable_raw
from shm.runtime.config_cluster import shard_keyed

START_TIMEOUT_S = 900          # a cold Numba cache compiles the rules: minutes on a loaded machine


def overrides(nats: NatsCluster | None, node: str, ack: str) -> dict:
    """A node's config sections; ``nats`` None: a single engine (no ``cluster:``). The
    lease TTL is the default (``cluster.lease_ttl_s``)."""
    raw = {"workers": {"standby": False},              # three nodes on two cores: no spare workers
           "features": shard_keyed(portable_raw()["features"], "account_id")[0]}
    if nats is not None:
        raw["cluster"] = {"servers": list(nats.urls), "credentials": nats.credentials,
                          "partitions": PARTITIONS, "node": node, "ack": ack}
    return raw


def start_all(engines: list[EngineProcess]) -> None:
    """The first node alone (a cold Numba cache compiles the rules once), then the rest
    overlapped; every one closed again if any fails to start."""
    try:
        engines[0].launch().wait_serving()
        for e in engines[1:]:
            e.launch()
        for e in engines[1:]:
            e.wait_serving()
    except BaseException:
        for e in engines:
            e.close()
        raise


@contextmanager
def node_set(tmp, nats: NatsCluster | None, ack: str = "sync", n: int = 3):
    """One engine alone (``nats`` None) or ``n`` cluster nodes ``n0``..; yields the list."""
    # each engine in a session (so a scheduler autogroup) of its own, as each nats-server is:
    # a node stands for a machine. In the bench's autogroup the nodes shared one CFS share
    # against other runs' engines (each in its own session) and missed their lease renewals:
    # at load average 35 a trio held 3 of 8 partitions for 180 s (2026-12-07)
    engines = [EngineProcess(tmp, workers=1, overrides=overrides(nats, f"n{i}", ack),
                             ready_timeout_s=START_TIMEOUT_S, own_session=True)
               for i in range(1 if nats is None else n)]
    start_all(engines)
    try:
        yield engines
    finally:
        for e in engines:                   # all asked to stop at once: no hand-overs between
            if e.proc is not None and e.proc.poll() is None:     # nodes that are all going
                e.proc.send_signal(signal.SIGTERM)
        for e in engines:
            e.close()


def owned(e: EngineProcess) -> set[int]:
    """The partitions ``e`` serves now (its admin plane; empty when it does not answer)."""
    try:
        rep = request(e.admin_bind, {"cmd": "cluster"}, 10_000)
    except (TimeoutError, OSError):
        return set()
    return set(rep["cluster"]["owned"]) if rep.get("ok") else set()


def balanced(got: list[set[int]], partitions: int) -> bool:
    """Is ``got`` (each node's partitions) where the agents' balance settles: every partition
    held by exactly one node, none over its share (engine.cluster.members.share: 3/3/2 for 8
    on 3 nodes, 22/22/20 or 22/21/21 for 64)?"""
    return set().union(*got) == set(range(partitions)) and sum(map(len, got)) == partitions \
        and max(map(len, got)) <= share(partitions, len(got))


def wait_balanced(engines: list[EngineProcess], timeout_s: float = 180,
                  partitions: int = PARTITIONS) -> list[set[int]]:
    """Wait until the nodes' partitions are ``balanced``. Returns each node's partitions;
    raises TimeoutError."""
    end = time.monotonic() + timeout_s
    got: list[set[int]] = []
    while time.monotonic() < end:
        got = [owned(e) for e in engines]
        if balanced(got, partitions):
            return got
        time.sleep(0.1)
    raise TimeoutError(f"partitions not balanced over {len(engines)} node(s) after {timeout_s:g} s: "
                       f"{[sorted(g) for g in got]}")


class CpuMeter:
    """User + system CPU seconds of each engine's process tree (supervisor, ingress, workers,
    and any child alive at a read) and of each nats-server, read from /proc by psutil. A
    process alive at the second read but not the first counts from its start; one gone by
    the second read is lost (none exits during a phase)."""

    def __init__(self, engines: list[EngineProcess], nats: NatsCluster | None = None):
        self.engines = engines
        self.nats_pids = [s.proc.pid for s in nats.servers] if nats is not None else []

    @staticmethod
    def _tree(pid: int) -> dict[int, float]:
        out = {}
        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return out
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        return out

    def read(self) -> tuple[dict[int, float], dict[int, float]]:
        """(engine processes' CPU s by pid, nats-servers' CPU s by pid)."""
        eng: dict[int, float] = {}
        for e in self.engines:
            eng.update(self._tree(e.pid))
        nats: dict[int, float] = {}
        for pid in self.nats_pids:
            nats.update(self._tree(pid))
        return eng, nats

    def delta(self, before) -> tuple[float, float]:
        """(engines' CPU s, nats-servers' CPU s) since ``before`` (a ``read()``)."""
        after = self.read()
        return tuple(sum(v - b.get(pid, 0.0) for pid, v in a.items())     # type: ignore[return-value]
                     for a, b in zip(after, before))
