"""``python -m bench.overload``: the engine at twice its sustainable rate (issue 7).

1. Probe: closed loop, ``--inflight`` requests in flight from one DEALER, for ``--probe`` s:
   the sustainable rate X (decisions/s).
2. Overload: open loop at ``--factor`` x X for ``--duration`` s from one DEALER: request i is
   due at t0 + i / rate and its latency is measured from that intended time (coordinated
   omission corrected). Replies are classified: decided, OVERLOADED, TIMEOUT default, other.
3. Prints the admitted requests' p50/p99/max, how fast OVERLOADED came back, the requests
   never answered, the engine's own latency histogram of what it admitted over the same
   period (arrival at the ingress to reply: what the engine bounds, whatever the sender's
   lateness), and the RSS of every engine process before and after (memory must stay
   flat: every queue is bounded; ingress.max_inflight sheds the rest).
The sender shares the machine's 2 cores with the engine: say so with the figures.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import zmq


def _classify(frame: bytes) -> tuple[int, str]:
    from engine.types import ErrorCode
    from ingress import wire
    rid, err, dec, _ = wire.unpack_reply(frame)
    if err:
        return rid, ErrorCode(err).name
    if (dec["flags"] & 0xDE).any():          # beyond FIRED_OVERFLOW and EVAL_ERROR: a default
        return rid, "DEFAULT_" + ("TIMEOUT" if (dec["error"] == ErrorCode.TIMEOUT).any() else "OTHER")
    return rid, "decided"


def run(endpoint: str, schema, rate: float, seconds: float, closed_inflight: int = 0,
        client_id: int = 9) -> dict:
    from bench.events import random_records
    from ingress import wire
    recs = random_records(schema, 4096, seed=5, n_accounts=100_000)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(endpoint)
    due: dict[int, int] = {}
    lat: dict[str, list] = {}
    t0 = time.monotonic_ns()
    end = t0 + int(seconds * 1e9)
    i = 0
    while True:
        now = time.monotonic_ns()
        if closed_inflight:
            while len(due) < closed_inflight and now < end:
                i += 1
                due[i] = now
                s.send_multipart([b"", wire.pack_request(schema.hash, recs[i % 4096:i % 4096 + 1], client_id, i)])
        else:
            while now < end and t0 + int((i + 1) * 1e9 / rate) <= now:
                i += 1
                due[i] = t0 + int(i * 1e9 / rate)
                s.send_multipart([b"", wire.pack_request(schema.hash, recs[i % 4096:i % 4096 + 1], client_id, i)])
        if now >= end and (not due or now > end + 5e9):
            break
        if s.poll(1):
            while s.poll(0):
                rid, kind = _classify(s.recv_multipart()[-1])
                t = due.pop(rid, None)
                if t is not None:
                    lat.setdefault(kind, []).append(time.monotonic_ns() - t)
    s.close(0)
    return {"sent": i, "unanswered": len(due), "elapsed_s": seconds,
            "lat_us": {k: np.array(v) / 1e3 for k, v in lat.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.overload")
    ap.add_argument("--probe", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--config", help="engine config (default: the bundled one)")
    a = ap.parse_args(argv)
    from bench.engine_proc import EngineProcess, engine_latency, engine_latency_text
    from bench.soak import engine_memory
    from engine.config import load_config
    schema = load_config(a.config).schema
    eng = EngineProcess(a.config)
    try:
        rss0 = engine_memory(eng.pid)
        probe = run(eng.bind, schema, 0, a.probe, closed_inflight=a.inflight)
        x = len(probe["lat_us"].get("decided", [])) / a.probe
        st0 = eng.stats()
        r = run(eng.bind, schema, a.factor * x, a.duration, client_id=10)   # fresh ids: no dedup
        st1 = eng.stats()
        rss1 = engine_memory(eng.pid)
    finally:
        eng.stop()
    print(f"sustainable (closed loop, {a.inflight} in flight): {x:,.0f} decisions/s")
    print(f"offered {a.factor:g}x = {a.factor * x:,.0f} req/s for {a.duration:g} s: sent {r['sent']} "
          f"({r['sent'] / a.duration:,.0f}/s achieved by the sender), never answered {r['unanswered']}")
    for k, v in sorted(r["lat_us"].items()):
        p = np.percentile(v, [50, 99, 100]) if len(v) else [0, 0, 0]
        print(f"  {k:<18} {len(v):>8}  p50 {p[0] / 1e3:8.2f} ms  p99 {p[1] / 1e3:8.2f} ms  max {p[2] / 1e3:8.2f} ms")
    e = engine_latency(st0, st1)
    if e and e.get("count"):
        print(f"  engine side, admitted: {engine_latency_text(e)}")
    print("memory before -> after, MiB: RSS; RssAnon (private; RSS also counts the shared "
          "feature tables and journal pages a process touched)")
    for k, (rss, anon) in rss0.items():
        r1, n1 = rss1.get(k, (0, 0))
        print(f"  {k.replace('risk-engine: ', ''):<12} {rss / 2**20:7.1f} -> {r1 / 2**20:7.1f};"
              f"  {anon / 2**20:7.1f} -> {n1 / 2**20:7.1f}")
    print("note: the sender runs on the same 2 cores as the engine")
    return 0 if r["unanswered"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
