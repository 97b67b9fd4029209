"""Failover time for ``bench.cluster``: kill -9 of an engine node that serves partitions,
under a light load, timed until its partitions are served again; then the node restarted
and the partitions balanced again, so every kill finds three nodes.

DEFINITION (printed with the figures): from the SIGKILL of the node's process group until
every partition it served has answered a successful decision from its new owner. A probe
per lost partition (an event of an account in it) goes straight to each surviving node every
PROBE_S (not through the cluster client, whose back-off between asks would add up to 0.5 s);
a node that does not serve the partition answers NOT_OWNER at once; success is a decision
with no error code (with ``ack: sync``: its record is in the stream). The first partition
served again is printed too. The light load is one cluster-mode client sending a decision
every LOAD_PAUSE_S; its decisions and failures are printed.
"""
from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager

import numpy as np

from bench.acksync import DEADLINE_MS, EVENT, PARTITIONS
from bench.cluster_nodes import wait_balanced
from bench.engine_proc import EngineProcess
from ingress.admission import shard_of
from ingress.client import Client, ClientTimeout, RequestError
from ingress.cluster_client import ClusterClient

PROBE_S = 0.02
PROBE_TIMEOUT_MS = 1000
LOAD_PAUSE_S = 0.01                # about 100 decisions/s at most: a light load
SERVED_TIMEOUT_S = 120
DEFINITION = ("failover time = from the kill -9 of a node serving partitions until every partition it "
              "served has answered a successful decision (a probe sent straight to each surviving node "
              f"every {PROBE_S * 1e3:g} ms) from its new owner; the killed node then restarted and the "
              "partitions rebalanced before the next kill")


def account_in(p: int, start: int = 900_000) -> int:
    """The first account id from ``start`` whose partition is ``p``."""
    ids = np.arange(start, start + 64 * PARTITIONS, dtype=np.int64)
    return int(ids[shard_of(ids, PARTITIONS) == p][0])


@contextmanager
def client_load(cc: ClusterClient, first_account: int, pause_s: float = 0.0, acked: dict | None = None):
    """Single decisions sent through the cluster client ``cc`` on a thread until the block
    ends, ``pause_s`` apart, accounts from ``first_account`` on: yields (ok, failed): ok[0]
    counts the decisions without an error code, failed lists every other outcome ("Type:
    message" for a request that raised, else the decision's error code). With ``acked``, each
    event's amount is unique (``first_account`` + its index + 0.25) and each acknowledged
    decision is kept there, amount -> account, so it can be found in the stream."""
    ok, failed, stop = [0], [], threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            i += 1
            ev = {**EVENT, "account_id": first_account + i % 997, "amount": float(i)}
            if acked is not None:
                ev["amount"] = first_account + i + 0.25
            try:
                d = cc.evaluate(ev)
            except Exception as e:              # noqa: BLE001  every failure is the finding
                failed.append(f"{type(e).__name__}: {e}")
                continue
            if d.error is None:
                ok[0] += 1
                if acked is not None:
                    acked[ev["amount"]] = ev["account_id"]
            else:
                failed.append(str(d.error))
            stop.wait(pause_s)
    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        yield ok, failed
    finally:
        stop.set()
        t.join(60)


def served_again(survivors: list[EngineProcess], lost: set[int], t_kill: float) -> dict[int, float]:
    """Seconds from ``t_kill`` (time.monotonic) to each lost partition's first successful
    probe decision (module doc); raises TimeoutError after SERVED_TIMEOUT_S."""
    clients = [Client(e.endpoint, timeout_ms=PROBE_TIMEOUT_MS, retries=0, deadline_ms=PROBE_TIMEOUT_MS)
               for e in survivors]
    accounts = {p: account_in(p) for p in lost}
    served: dict[int, float] = {}
    n = 0
    try:
        while len(served) < len(lost):
            if time.monotonic() - t_kill > SERVED_TIMEOUT_S:
                raise TimeoutError(f"partitions {sorted(lost - set(served))} not served "
                                   f"{SERVED_TIMEOUT_S} s after the kill")
            for p in sorted(lost - set(served)):
                for c in clients:
                    n += 1
                    try:
                        d = c.evaluate({**EVENT, "account_id": accounts[p], "amount": float(n)})
                    except (RequestError, ClientTimeout):     # NOT_OWNER: not this node (yet)
                        continue
                    if d.error is None:
                        served[p] = time.monotonic() - t_kill
                        break
            time.sleep(PROBE_S)
    finally:
        for c in clients:
            c.close()
    return served


def kill_once(nodes: list[EngineProcess], victim: EngineProcess, lost: set[int]) -> dict[int, float]:
    """kill -9 ``victim`` (serving ``lost``), time its partitions served again, restart it
    and wait for the balance: the per-partition seconds."""
    t_kill = time.monotonic()
    victim.kill()
    served = served_again([e for e in nodes if e is not victim], lost, t_kill)
    victim.close()                          # what a kill leaves: segments, run directory
    victim.launch().wait_serving()          # the same instance, config and journal
    wait_balanced(nodes)
    return served


def failovers(nodes: list[EngineProcess], nats, kills: int, out=print) -> dict:
    """``kills`` kills of nodes in turn, each serving partitions, under the light load; one
    line per kill through ``out``. Returns the figures (seconds) and the load's counts."""
    times, firsts = [], []
    with ClusterClient(nats.urls, timeout_ms=5000, retries=3, deadline_ms=DEADLINE_MS,
                       credentials=nats.client_credentials) as cc, \
            client_load(cc, 700_000, LOAD_PAUSE_S) as (ok, failed):
        for k in range(kills):
            held = wait_balanced(nodes)
            i = k % len(nodes)
            served = kill_once(nodes, nodes[i], held[i])
            times.append(max(served.values()))
            firsts.append(min(served.values()))
            out(f"kill {k + 1}: {nodes[i].raw['cluster']['node']} ({len(served)} partitions): all served "
                f"again after {times[-1]:.2f} s, the first after {firsts[-1]:.2f} s")
    return {"times": times, "firsts": firsts, "median": statistics.median(times),
            "load_ok": ok[0], "load_failed": list(failed)}
