"""``python -m bench.metrics_overhead``: p50 of the engine round trip with metrics on vs off,
in one run. Two engines (same config, 1 worker each; one started with ``--metrics off``,
which also skips the ingress's per-request counters and histograms) are measured by one REQ
client in interleaved rounds, so machine noise hits both alike. Target (issue 5): ratio
on/off <= 1.05."""
from __future__ import annotations

import argparse
import time

import numpy as np
import zmq


def rounds(endpoints: dict, n_per_round: int, n_rounds: int, schema) -> dict:
    from bench.events import random_records
    from ingress import wire
    recs = random_records(schema, 512, seed=3, n_accounts=1000)
    ctx = zmq.Context.instance()
    socks = {k: ctx.socket(zmq.REQ) for k in endpoints}
    for k, s in socks.items():
        s.connect(endpoints[k])
    lat = {k: [] for k in endpoints}
    rid = 1
    for r in range(n_rounds):
        for k, s in (socks.items() if r % 2 == 0 else reversed(list(socks.items()))):
            for i in range(n_per_round):
                f = wire.pack_request(schema.hash, recs[i % 512:i % 512 + 1], 1, rid)
                rid += 1
                t = time.perf_counter_ns()
                s.send(f)
                s.recv()
                lat[k].append(time.perf_counter_ns() - t)
    for s in socks.values():
        s.close(0)
    return {k: np.array(v[n_per_round // 2:]) / 1e3 for k, v in lat.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.metrics_overhead")
    ap.add_argument("--requests", type=int, default=2000, help="per engine per round")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args(argv)
    from bench.engine_proc import EngineProcess
    from engine.config import load_config
    schema = load_config().schema
    on = EngineProcess(workers=1)
    off = EngineProcess(workers=1, metrics_off=True)
    try:
        lat = rounds({"on": on.bind, "off": off.bind}, a.requests, a.rounds, schema)
    finally:
        on.stop()
        off.stop()
    p50 = {k: float(np.percentile(v, 50)) for k, v in lat.items()}
    p99 = {k: float(np.percentile(v, 99)) for k, v in lat.items()}
    print(f"metrics on : p50 {p50['on']:.1f} us  p99 {p99['on']:.1f} us  ({len(lat['on'])} requests)")
    print(f"metrics off: p50 {p50['off']:.1f} us  p99 {p99['off']:.1f} us  ({len(lat['off'])} requests)")
    print(f"p50 ratio on/off: {p50['on'] / p50['off']:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
