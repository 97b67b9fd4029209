"""``python -m bench.sockopts``: what the ingress pays to receive a 3-frame message
([identity, empty, body], as a REQ client sends it), by how it asks for ZMQ_RCVMORE, and one
``ZMQ_EVENTS`` read, all in one run over inproc:// (no network, no other process).

    recv_multipart              pyzmq's own loop
    recv + Socket.get(RCVMORE)  pyzmq 27 converts the option to an enum on every call
    recv + SockOpts.rcvmore()   libzmq's zmq_getsockopt through ctypes (ingress.sockopts)

and what one ``send`` of a 136-byte frame costs through pyzmq's ``Socket.send`` and through
``backend_send`` (the compiled backend's, without the Python wrapper).
"""
from __future__ import annotations

import argparse
import time

import zmq

from ingress.sockopts import SockOpts, backend_send


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sockopts", description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.rcvhwm = 0
    r.bind("inproc://sockopts")
    d = ctx.socket(zmq.DEALER)
    d.sndhwm = 0
    d.connect("inproc://sockopts")
    n, body, opts = a.messages, b"x" * 240, SockOpts(r)
    rcvmore_int, events_int = int(zmq.RCVMORE), int(zmq.EVENTS)

    def multipart():
        for _ in range(n):
            r.recv_multipart()

    def pyzmq_get():
        recv, get = r.recv, r.get
        for _ in range(n):
            f = [recv()]
            while get(rcvmore_int):
                f.append(recv())

    def sockopts():
        recv, more = r.recv, opts.rcvmore
        for _ in range(n):
            f = [recv()]
            while more():
                f.append(recv())

    best: dict[str, float] = {}
    for _ in range(a.repeat):
        for name, fn in (("recv_multipart", multipart), ("recv + Socket.get(RCVMORE)", pyzmq_get),
                         ("recv + SockOpts.rcvmore()", sockopts)):
            for _ in range(n):
                d.send_multipart([b"", body])
            t = time.perf_counter()
            fn()
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / n * 1e6)
        for name, send in (("Socket.send", d.send), ("backend_send", backend_send(d))):
            frame, nowait = bytes(136), int(zmq.NOBLOCK)
            t = time.perf_counter()
            for _ in range(n):
                send(frame, nowait)
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / n * 1e6)
            for _ in range(n):
                r.recv_multipart()
        for name, fn in (("Socket.get(EVENTS)", lambda: r.get(events_int)), ("SockOpts.events()", opts.events)):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / n * 1e6)
    print(f"best of {a.repeat}, {n} messages each (libzmq called directly: {opts.direct})")
    for name, us in best.items():
        print(f"  {name:<28} {us:6.2f} us")
    d.close(0)
    r.close(0)
    ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
