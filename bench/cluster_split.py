"""What a cluster client's batch costs, split by partition (docs/CLUSTER.md, "Routing").

``python -m bench.cluster_split [--partitions 64] [--old FILE]``: three NATS servers and three
engine nodes (ack async, one worker each) on loopback; one ``ClusterClient`` sends batches of
1, 8 and 64 events of random accounts, ``--rounds`` rounds of ``--batches`` batches each, after
5 warm-up batches a round, once the partitions are balanced (bench.cluster_nodes.wait_balanced:
22/22/20 for 64). Per batch size: the partitions (one request each) and the owners a batch
spans, and the call's latency, p50 and p99; at the end each client's NOT_OWNER redirects and
replies dropped (a call that waited out a hand-over shows in p99). ``--old FILE``: a
``ClusterClient`` from another version of ingress/cluster_client.py (e.g. ``git show
main:ingress/cluster_client.py``) measured in alternating rounds against this one."""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time

import numpy as np

from bench.cluster_nodes import overrides, start_all, wait_balanced
from bench.engine_proc import EngineProcess, free_port
from engine.cluster.natsserver import NatsCluster
from ingress.admission import shard_of
from ingress.cluster_client import ClusterClient

EVENT = {"card_id": 1, "device_id": 1, "amount": 10.0, "currency": "EUR", "country": "DE",
         "ip": "10.1.2.3", "mcc": 5411, "channel": 1, "ts_ms": 1_700_000_000_000, "instrument_id": 0,
         "side": 0, "qty": 0, "price": 0.0, "ref_price": 0.0, "is_test": False}


def load_old(path: str):
    spec = importlib.util.spec_from_file_location("old_cluster_client", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ClusterClient


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--old", help="another ingress/cluster_client.py to compare with")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(24)
    with tempfile.TemporaryDirectory() as tmp, NatsCluster(3, port_fn=free_port) as nats:
        nodes = []
        for i in range(3):
            ov = overrides(nats, f"n{i}", "async")
            ov["cluster"]["partitions"] = a.partitions
            nodes.append(EngineProcess(tmp, workers=1, overrides=ov, own_session=True))
        start_all(nodes)
        try:
            got = wait_balanced(nodes, partitions=a.partitions)
            kw = dict(timeout_ms=20_000, retries=0, deadline_ms=10_000, credentials=nats.client_credentials)
            clients = {"this tree": ClusterClient(nats.urls, **kw)}
            if a.old:
                clients["--old"] = load_old(a.old)(nats.urls, **kw)
            print(f"partitions {a.partitions}, held {[len(g) for g in got]}", flush=True)
            for n in (1, 8, 64):
                lat = {k: [] for k in clients}
                spans = {k: [] for k in clients}              # (partitions, owners) per batch
                for rnd in range(a.rounds):
                    for k, c in (list(clients.items()) if rnd % 2 == 0 else list(clients.items())[::-1]):
                        for b in range(5 + a.batches):
                            accts = rng.integers(1, 10**6, n)
                            evs = [{**EVENT, "account_id": int(x)} for x in accts]
                            t = time.perf_counter()
                            c.evaluate_batch(evs)
                            if b >= 5:
                                lat[k].append((time.perf_counter() - t) * 1e3)
                                ps = set(shard_of(accts, c.partitions).tolist())
                                spans[k].append((len(ps), len({c.owner(p) for p in ps})))
                for k in clients:
                    ms, sp = np.array(lat[k]), np.array(spans[k])
                    print(f"batch {n:3d} {k:10s}: partitions/batch {sp[:, 0].mean():5.1f}  owners/batch "
                          f"{sp[:, 1].mean():4.1f}  p50 "
                          f"{np.percentile(ms, 50):7.2f} ms  p99 {np.percentile(ms, 99):7.2f} ms  "
                          f"(n={len(ms)})", flush=True)
            for k, c in clients.items():
                print(f"{k}: NOT_OWNER redirects {c.redirects}, replies dropped "
                      f"{getattr(c, 'ignored_replies', '-')}", flush=True)
                c.close()
        finally:
            for e in nodes:
                e.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
