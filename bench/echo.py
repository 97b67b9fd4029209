"""The baseline: a raw pyzmq ROUTER that sends every message straight back, in its own process.

``python -m bench.echo --bind ADDR`` prints ``echo: serving ADDR`` when bound and, after
SIGTERM or SIGINT, ``echo: handled N`` (messages echoed) and exits 0. The loop uses pyzmq
only, at its cheapest: ``recv``, ``Socket.get(RCVMORE)`` and the compiled backend's ``send``
(ingress.sockopts.backend_send), cheaper than ``*_multipart``: the
floor plain pyzmq reaches here, not a straw man. It is the "raw pyzmq echo" of issue 6, so it
does not read ZMQ_RCVMORE from libzmq through ctypes as the ingress does (that is the
engine's own engineering).

``EchoServer(bind)`` starts and stops that process from the harness.
"""
from __future__ import annotations

import argparse
import select
import signal
import subprocess
import sys
import time

import zmq

from ingress.sockopts import backend_send


def serve(bind: str, stop: list) -> int:
    """Echo until ``stop[0]`` is true (checked at least every 200 ms); returns messages echoed."""

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 200)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(bind)
    print(f"echo: serving {bind}", flush=True)
    handled = 0
    frames: list = []
    recv, send, more, sndmore = sock.recv, backend_send(sock), sock.get, int(zmq.SNDMORE)
    while not stop[0]:
        try:
            frames.append(recv())
        except zmq.Again:
            continue
        while more(zmq.RCVMORE):
            frames.append(recv())
        last = len(frames) - 1
        for j, f in enumerate(frames):
            send(f, sndmore if j < last else 0)
        frames.clear()
        handled += 1
    sock.close(0)
    return handled


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.echo", description="raw pyzmq ROUTER echo server")
    ap.add_argument("--bind", required=True)
    a = ap.parse_args(argv)
    stop = [False]

    def _stop(*_):
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    n = serve(a.bind, stop)
    print(f"echo: handled {n}", flush=True)
    return 0


class EchoServer:
    """The echo process, started on ``bind``; ``stop()`` returns the messages it echoed."""

    def __init__(self, bind: str, start_timeout_s: float = 30.0):
        self.bind = bind
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.echo", "--bind", bind],
                                     stdout=subprocess.PIPE, text=True)
        line = _readline(self.proc, start_timeout_s)
        if not line.startswith("echo: serving"):
            self.proc.kill()
            raise RuntimeError(f"echo server did not start: bind={bind} output={line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout_s)
        for line in out.splitlines():
            if line.startswith("echo: handled "):
                return int(line.split()[-1])
        raise RuntimeError(f"echo server exited rc={self.proc.returncode} without a count")


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            return proc.stdout.readline()
        if proc.poll() is not None:
            return ""
    return ""


if __name__ == "__main__":
    sys.exit(main())
