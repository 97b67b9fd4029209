"""Measure what the attached sidecar costs a REQ -> ROUTER round trip, in one run (root).

    python -m bpf.overhead [--round-trips 5000]

Two REQ -> ROUTER pairs run interleaved round trip by round trip: one on the watched port,
one on an unwatched port, so machine drift hits both equally. Phase "off" runs without a
sidecar (control, ratio about 1); phase "on" with the sidecar watching the first port.
The on-phase ratio p50_watched / p50_unwatched is the cost of the map updates per round
trip; "on/off" compares the unwatched pair across phases (the cost of attached tracepoints
that return after one compare). Compare ratios, not absolute figures.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time

import numpy as np
import zmq

from bpf.spawn import SidecarUnavailable, start_sidecar


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _interleaved(ports: tuple[int, int], n: int, warmup: int = 200) -> np.ndarray:
    """[2, n] round-trip times in ns, pair 0 and pair 1 alternating."""
    ctx = zmq.Context()
    pairs = []
    for port in ports:
        router, req = ctx.socket(zmq.ROUTER), ctx.socket(zmq.REQ)
        router.bind(f"tcp://127.0.0.1:{port}")
        req.connect(f"tcp://127.0.0.1:{port}")
        pairs.append((router, req))
    out = np.empty((2, n), dtype=np.int64)
    body = b"x" * 64
    try:
        for i in range(n + warmup):
            for k, (router, req) in enumerate(pairs):
                t0 = time.perf_counter_ns()
                req.send(body)
                ident, empty, msg = router.recv_multipart()
                router.send_multipart([ident, empty, msg])
                req.recv()
                if i >= warmup:
                    out[k, i - warmup] = time.perf_counter_ns() - t0
    finally:
        for router, req in pairs:
            req.close(linger=0)
            router.close(linger=0)
        ctx.term()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--round-trips", type=int, default=5000)
    a = p.parse_args(argv)
    watched, unwatched = _free_port(), _free_port()
    p50 = {}
    for phase in ("off", "on"):
        sc = None
        if phase == "on":
            try:
                sc = start_sidecar(watched, metrics="127.0.0.1:0")
            except SidecarUnavailable as e:
                print(f"sidecar unavailable: {e}", file=sys.stderr)
                return int(e.code)
        try:
            rt_us = _interleaved((watched, unwatched), a.round_trips) / 1000.0
        finally:
            if sc:
                sc.stop()
        w, u = (float(np.percentile(r, 50)) for r in rt_us)
        p50[phase] = u
        print(f"{phase:3s} n={a.round_trips} p50_us watched={w:.1f} unwatched={u:.1f} "
              f"p99_us watched={np.percentile(rt_us[0], 99):.1f} "
              f"unwatched={np.percentile(rt_us[1], 99):.1f} ratio_p50={w / u:.3f}")
    print(f"unwatched p50 on/off ratio={p50['on'] / p50['off']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
