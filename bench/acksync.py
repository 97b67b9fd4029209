"""Per-decision cost of ``cluster.ack: sync`` against ``async`` on one engine node: three
nats-servers on loopback (R3), one node holding every partition, one worker; per mode a fresh
node, then one closed-loop client's latency (p50/p99 over ``--decisions``) and the decisions/s
of ``--clients`` closed-loop clients over ``--seconds``. Modes alternate over ``--rounds``
(sync, async, sync, ...), so drift on a shared machine hits them alike.

    python -m bench.acksync [--decisions 500] [--seconds 5] [--clients 4] [--rounds 2] [--rest 10]

``--rest S``: first, the node's CPU at rest (it holds every partition, no request) over S
seconds, as a share of one core: its process tree (supervisor with the lease agent and the
journal tailer, worker, ingress).

Every request carries a 5 s deadline (a decision held past the 50 ms default would be answered
TIMEOUT, which is not what is measured); a decision that is not a success ends the run.
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time

import numpy as np
import psutil

from bench.engine_proc import EngineProcess, free_port
from bench.phase import _tree_cpu
from engine.cluster.natsserver import NatsCluster
from ingress.client import Client
from shm.runtime.config import portable_raw
from shm.runtime.config_cluster import shard_keyed

PARTITIONS = 8
DEADLINE_MS = 5000
EVENT = {"account_id": 1, "card_id": 1, "device_id": 1, "amount": 1.0, "currency": "EUR", "country": "DE",
         "ip": "10.1.2.3", "mcc": 5411, "channel": 1, "ts_ms": 1_700_000_000_000, "instrument_id": 0,
         "side": 0, "qty": 0, "price": 0.0, "ref_price": 0.0, "is_test": False}


def node_overrides(nats: NatsCluster, ack: str) -> dict:
    return {"cluster": {"servers": list(nats.urls), "credentials": nats.credentials,
                        "partitions": PARTITIONS, "node": f"bench-{ack}",
                        "ack": ack, "lease_ttl_s": 10.0},     # no lease lapse on a loaded machine
            "workers": {"standby": False},
            "features": shard_keyed(portable_raw()["features"], "account_id")[0]}   # as cluster up


def owns_all(e: EngineProcess, timeout_s: float = 180) -> None:
    from engine.admin_client import request     # lazy: only the bench needs the admin client
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            rep = request(e.admin_bind, {"cmd": "cluster"}, 10_000)
        except TimeoutError:            # a loaded machine (seen at load 15-25): ask again
            continue
        if rep.get("ok") and len(rep["cluster"]["owned"]) == PARTITIONS:
            return
        time.sleep(0.2)
    raise TimeoutError(f"node {e.instance}: does not hold all {PARTITIONS} partitions after {timeout_s:g} s")


def latency(connect, decisions: int, first_account: int = 1000) -> tuple[float, float]:
    """(p50 ms, p99 ms) of one closed-loop client made by ``connect()`` (a Client or a
    ClusterClient) over ``decisions``, after 20 that warm the path; a decision that is not a
    success raises."""
    lat = []
    with connect() as c:
        for i in range(decisions + 20):
            t0 = time.perf_counter()
            d = c.evaluate({**EVENT, "account_id": first_account + i % 97, "amount": float(i)})
            if d.error is not None:
                raise RuntimeError(f"decision {i}: {d.error}")
            if i >= 20:
                lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def throughput(connect, seconds: float, clients: int, first_account: int = 5000) -> tuple[int, list[str]]:
    """``clients`` closed-loop clients, each made by ``connect()``, for ``seconds``: (successful
    decisions, failures): a decision with an error code or a request that raised, as
    "CODE"/"Type: message" (every failure is a finding, so none ends the phase)."""
    done, failed, stop = [0] * clients, [], threading.Event()

    def load(k: int) -> None:
        with connect() as c:
            for i in itertools.count():
                if stop.is_set():
                    return
                try:
                    d = c.evaluate({**EVENT, "account_id": first_account + 1000 * k + i % 97, "amount": 1.0})
                except Exception as e:          # noqa: BLE001  counted, the phase goes on
                    failed.append(f"{type(e).__name__}: {e}")
                    continue
                if d.error is None:
                    done[k] += 1
                else:
                    failed.append(str(d.error))
    ts = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(clients)]
    try:
        for t in ts:
            t.start()
        time.sleep(seconds)
    finally:                                    # Ctrl-C too: no client outlives the phase
        stop.set()
        for t in ts:
            t.join(60)
    return sum(done), failed


def measure(e: EngineProcess, decisions: int, seconds: float, clients: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, decisions/s) of one node, straight to its ingress."""
    def connect():
        return Client(e.endpoint, timeout_ms=20_000, retries=0, deadline_ms=DEADLINE_MS)
    p50, p99 = latency(connect, decisions)
    ok, _ = throughput(connect, seconds, clients)
    return p50, p99, ok / seconds


def at_rest(e: EngineProcess, seconds: float) -> float:
    """Cores the node's process tree used over ``seconds`` with no request."""
    tree = [psutil.Process(e.pid)]
    c0, t0 = _tree_cpu(tree), time.monotonic()
    time.sleep(seconds)
    return (_tree_cpu(tree) - c0) / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.acksync", description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=500, help="one client's decisions for p50/p99")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput phase per mode")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop clients of the throughput phase")
    ap.add_argument("--rounds", type=int, default=2, help="sync and async once each per round")
    ap.add_argument("--rest", type=float, default=0.0, help="seconds of CPU at rest first (0: none)")
    a = ap.parse_args(argv)
    print(f"cluster.ack per decision: 3 nats-servers on loopback (R3), 1 node, {PARTITIONS} partitions, "
          f"1 worker; {a.decisions} decisions by 1 client, then {a.clients} clients for {a.seconds:g} s")
    print(f"{'mode':6s} {'p50 ms':>8s} {'p99 ms':>8s} {'decisions/s':>12s}" + (" rest cores" if a.rest else ""))
    with NatsCluster(3, port_fn=free_port) as nats, tempfile.TemporaryDirectory() as tmp:
        for _, ack in itertools.product(range(a.rounds), ("sync", "async")):
            with EngineProcess(tmp, workers=1, overrides=node_overrides(nats, ack)) as e:
                owns_all(e)
                rest = f" {at_rest(e, a.rest):10.2f}" if a.rest else ""
                p50, p99, rate = measure(e, a.decisions, a.seconds, a.clients)
            print(f"{ack:6s} {p50:8.2f} {p99:8.2f} {rate:12.0f}{rest}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
