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
The sender shares the machine's 2 cores with the engine unless ``--split`` gives each side a
core of its own; it prints how much of a CPU the sender used (a saturated sender queues the
replies itself, and that wait lands in its figures).
"""
from __future__ import annotations

import argparse
import os
import struct
import time

import numpy as np
import psutil
import zmq

from bench.engine_proc import EngineProcess, engine_latency, engine_latency_text, engine_memory
from bench.events import random_records
from shm.runtime.config import load_config
from shm.types import ErrorCode
from ingress import wire

_U64 = struct.Struct("<Q")


def _classify(frame: bytes) -> str:
    _, err, dec, _ = wire.unpack_reply(frame)
    if err:
        return ErrorCode(err).name
    if (dec["flags"] & 0xDE).any():          # beyond FIRED_OVERFLOW and EVAL_ERROR: a default
        for code in (ErrorCode.TIMEOUT, ErrorCode.WORKER_LOST):
            if (dec["error"] == code).any():
                return f"DEFAULT_{code.name}"
        return "DEFAULT_OTHER"
    return "decided"


def run(endpoint: str, schema, rate: float, seconds: float, closed_inflight: int = 0,
        client_id: int = 9) -> dict:
    """One DEALER, closed loop (``closed_inflight``) or open loop at ``rate``. The loop does
    as little per message as it can (a request is a copied template with its id patched in,
    two plain sends; a reply is two plain receives, its id read with struct, and the
    classification waits until the run is over): a sender that saturates its own CPU queues
    the replies itself, and that wait would be charged to the engine. ``cpu_share`` reports
    how busy it was."""
    recs = random_records(schema, 4096, seed=5, n_accounts=100_000)
    templates = [wire.pack_request(schema.hash, recs[j:j + 1], client_id, 0) for j in range(4096)]
    rid_at = wire.REQUEST_HEADER_DTYPE.fields["request_id"][1]
    reply_rid = wire.REPLY_HEADER
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(endpoint)
    send, recv = s.send, s.recv
    more, nowait = int(zmq.SNDMORE), int(zmq.NOBLOCK)
    due: dict[int, int] = {}
    replies: list = []                        # (frame, latency ns), classified after the run

    def send_one(i: int, t: int) -> None:
        frame = bytearray(templates[i & 4095])
        _U64.pack_into(frame, rid_at, i)
        due[i] = t
        send(b"", more)
        send(frame)

    cpu0 = time.process_time()
    t0 = time.monotonic_ns()
    end = t0 + int(seconds * 1e9)
    i = 0
    while True:
        now = time.monotonic_ns()
        if closed_inflight:
            while len(due) < closed_inflight and now < end:
                i += 1
                send_one(i, now)
        else:
            while now < end and t0 + int((i + 1) * 1e9 / rate) <= now:
                i += 1
                send_one(i, t0 + int(i * 1e9 / rate))
        if now >= end and (not due or now > end + 5e9):
            break
        if s.poll(1):
            while True:
                try:
                    recv(nowait)                  # the empty delimiter
                except zmq.Again:
                    break
                frame = recv()
                t = due.pop(reply_rid.unpack_from(frame)[5], None)
                if t is not None:
                    replies.append((frame, time.monotonic_ns() - t))
    wall = (time.monotonic_ns() - t0) / 1e9
    cpu = time.process_time() - cpu0
    s.close(0)
    lat: dict[str, list] = {}
    for frame, ns in replies:
        lat.setdefault(_classify(frame), []).append(ns)
    return {"sent": i, "unanswered": len(due), "elapsed_s": seconds, "cpu_share": cpu / wall,
            "lat_us": {k: np.array(v) / 1e3 for k, v in lat.items()}}


def _pin_tree(pid: int, cpus: set) -> None:
    """Every thread of a process and of its descendants onto ``cpus`` (libzmq's I/O threads
    included: taskset -a over the tree)."""
    root = psutil.Process(pid)
    for p in [root] + root.children(recursive=True):
        for t in p.threads():
            os.sched_setaffinity(t.id, cpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench.overload")
    ap.add_argument("--probe", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--config", help="engine config (default: the bundled one)")
    ap.add_argument("--split", action="store_true",
                    help="every engine thread on the first allowed CPU, the sender on the others: "
                         "each side gets its own core (the closest this machine has to a sender "
                         "on another host)")
    a = ap.parse_args(argv)
    schema = load_config(a.config).schema
    eng = EngineProcess(config=a.config, workers=None, own_session=False).start()
    try:
        if a.split:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit(f"--split needs two CPUs; this process may use {cpus}")
            _pin_tree(eng.pid, {cpus[0]})
            os.sched_setaffinity(0, set(cpus[1:]))
        rss0 = engine_memory(eng.pid)
        probe = run(eng.endpoint, schema, 0, a.probe, closed_inflight=a.inflight)
        x = len(probe["lat_us"].get("decided", [])) / a.probe
        st0 = eng.stats()
        r = run(eng.endpoint, schema, a.factor * x, a.duration, client_id=10)   # fresh ids: no dedup
        st1 = eng.stats()
        rss1 = engine_memory(eng.pid)
    finally:
        eng.close()
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
    where = (f"engine on CPU {cpus[0]}, sender on {','.join(map(str, cpus[1:]))}" if a.split
             else "the sender runs on the same cores as the engine")
    print(f"note: {where}; the sender used {r['cpu_share']:.0%} of a CPU"
          + (" (saturated: replies queued in the sender itself are in its figures)"
             if r["cpu_share"] > 0.9 else ""))
    return 0 if r["unanswered"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
