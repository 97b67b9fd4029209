"""Real pyzmq REQ -> ROUTER traffic on one TCP port, bounded in count and time.

Also runnable inside a fresh network namespace with loss on its loopback:
    unshare -n python -m tests.bpf.traffic --port P --drop-every 4 --messages 20
(brings lo up, adds an iptables statistic DROP rule that deterministically drops every Nth
data segment the ROUTER side sends, runs the traffic, prints a JSON line). Deterministic
(`--mode nth`) rather than random so the test cannot pass or fail by luck.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import zmq

from tests.bpf import zmtp


@dataclass
class TrafficResult:
    connections: int
    messages: int
    client_to_server_bytes: int     # ZMTP oracle: what the engine side should receive
    server_to_client_bytes: int     # ... and send
    elapsed_s: float


def request_size(i: int) -> int:
    """Mostly small bodies (framing is a large share), every 50th over 255 bytes (long frame)."""
    return 300 if i % 50 == 49 else i % 17


def reply_size(i: int) -> int:
    return (i * 7) % 23


def run(port: int, connections: int, messages: int, timeout_s: float = 20.0,
        host: str = "127.0.0.1") -> TrafficResult:
    """Each of `connections` REQ sockets does `messages` round trips to one ROUTER, then all
    sockets close. Raises TimeoutError if a reply takes longer than the remaining budget."""
    ctx = zmq.Context()
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"tcp://{host}:{port}")
    reqs = []
    try:
        for _ in range(connections):
            s = ctx.socket(zmq.REQ)
            s.connect(f"tcp://{host}:{port}")
            reqs.append(s)
        for i in range(messages):
            for s in reqs:
                s.send(b"q" * request_size(i))
                if not router.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    raise TimeoutError(f"no request within budget timeout_s={timeout_s} i={i}")
                ident, empty, _body = router.recv_multipart()
                router.send_multipart([ident, empty, b"r" * reply_size(i)])
                if not s.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    raise TimeoutError(f"no reply within budget timeout_s={timeout_s} i={i}")
                s.recv()
    finally:
        for s in reqs:
            s.close(linger=0)
        router.close(linger=0)
        ctx.term()
    req_bodies = [request_size(i) for i in range(messages)]
    rep_bodies = [reply_size(i) for i in range(messages)]
    return TrafficResult(
        connections=connections, messages=messages,
        client_to_server_bytes=connections * zmtp.stream_bytes("REQ", req_bodies),
        server_to_client_bytes=connections * zmtp.stream_bytes("ROUTER", rep_bodies),
        elapsed_s=time.monotonic() - t0)


def _drop_server_data(port: int, every: int) -> None:
    """Drop every `every`-th non-SYN segment with payload (IP length > 52) from `port`.

    On INPUT, not OUTPUT: a segment refused by OUTPUT is a local send error that TCP sends
    again as new data, not a retransmission."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["iptables", "-A", "INPUT", "-i", "lo", "-p", "tcp", "--sport", str(port),
                    "--tcp-flags", "SYN", "NONE", "-m", "length", "--length", "53:65535",
                    "-m", "statistic", "--mode", "nth", "--every", str(every),
                    "--packet", "0", "-j", "DROP"], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--drop-every", type=int, default=0,
                   help="drop every Nth server data segment on lo (only inside `unshare -n`!)")
    p.add_argument("--timeout-s", type=float, default=20.0)
    a = p.parse_args(argv)
    if a.drop_every:
        _drop_server_data(a.port, a.drop_every)
    r = run(a.port, a.connections, a.messages, a.timeout_s)
    print(json.dumps(r.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
