"""The baseline: a raw pyzmq ROUTER that sends every message straight back, in its own process.

``python -m bench.echo --bind ADDR`` prints ``echo: serving ADDR`` when bound and, after
SIGTERM or SIGINT, ``echo: handled N`` (messages echoed) and exits 0. The loop uses pyzmq
only, at its cheapest: ``recv``, ``Socket.get(RCVMORE)`` and the compiled backend's ``send``
(ingress.sockopts.backend_send), cheaper than ``*_multipart``: the
floor plain pyzmq reaches here, not a straw man. It is the "raw pyzmq echo" of issue 6, so it
does not read ZMQ_RCVMORE from libzmq through ctypes as the ingress does (that is the
engine's own engineering).

``--compiled``: the same loop compiled (Numba, ``_echo_loop``), calling libzmq directly on
the pyzmq socket through ingress.zmqc: one ``zmq_msg_recv`` and one ``zmq_msg_send`` per
frame, the frame passed on without a copy, no Python per message. It is the floor a
compiled ingress can reach with this transport. It returns to Python at least every
``CHECK_STOP_NS`` (or on the 200 ms receive timeout, or a signal) so the stop is seen as
promptly as the pyzmq loop sees it.

``EchoServer(bind, compiled=False)`` starts and stops that process from the harness.
"""
from __future__ import annotations

import argparse
import select
import signal
import subprocess
import sys
import time

import numba
import numpy as np
import zmq
from numba import njit

from ingress import zmqc
from ingress.sockopts import backend_send

CHECK_STOP_NS = 50_000_000             # the compiled loop returns to look at the stop flag


def _socket(bind: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 200)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(bind)
    print(f"echo: serving {bind}", flush=True)
    return sock


def serve(bind: str, stop: list) -> int:
    """Echo until ``stop[0]`` is true (checked at least every 200 ms); returns messages echoed."""
    sock = _socket(bind)
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


@njit(cache=True)
def _echo_loop(h, msg, ts, budget_ns):
    """Echo whole messages on socket ``h`` for about ``budget_ns``; returns how many, or
    -1 - n after n when a libzmq call failed (a receive timeout, EAGAIN, or a signal, EINTR,
    ends the round too: the caller looks at its stop flag and calls again)."""
    m = msg.ctypes.data
    end = zmqc.monotonic_ns(ts) + budget_ns
    n = 0
    while True:
        zmqc.zmq_msg_init(m)
        if zmqc.zmq_msg_recv(m, h, 0) < 0:
            zmqc.zmq_msg_close(m)
            return -1 - n
        more = zmqc.zmq_msg_more(m)
        if zmqc.zmq_msg_send(m, h, zmqc.SNDMORE if more else 0) < 0:   # sent: libzmq owns it
            zmqc.zmq_msg_close(m)
            return -1 - n
        if not more:
            n += 1
            if zmqc.monotonic_ns(ts) >= end:
                return n


def serve_compiled(bind: str, stop: list) -> int:
    """``serve`` with the loop compiled (module doc); returns messages echoed."""
    msg, ts = zmqc.new_msg(), np.zeros(2, np.int64)
    # compiled (or loaded from the cache) before "serving": no client waits for it
    _echo_loop.compile((numba.types.uint64, numba.typeof(msg), numba.typeof(ts), numba.types.int64))
    sock = _socket(bind)
    handled = 0
    while not stop[0]:
        n = _echo_loop(np.uint64(zmqc.handle(sock)), msg, ts, CHECK_STOP_NS)
        handled += n if n >= 0 else -1 - n
    sock.close(0)
    return handled


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.echo", description="raw pyzmq ROUTER echo server")
    ap.add_argument("--bind", required=True)
    ap.add_argument("--compiled", action="store_true",
                    help="the same loop compiled, calling libzmq directly (no Python per message)")
    a = ap.parse_args(argv)
    stop = [False]

    def _stop(*_):
        stop[0] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    n = (serve_compiled if a.compiled else serve)(a.bind, stop)
    print(f"echo: handled {n}", flush=True)
    return 0


class EchoServer:
    """The echo process, started on ``bind`` (``compiled``: the compiled loop); ``stop()``
    returns the messages it echoed."""

    def __init__(self, bind: str, start_timeout_s: float = 30.0, compiled: bool = False):
        self.bind = bind
        self.compiled = compiled
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.echo", "--bind", bind]
                                     + (["--compiled"] if compiled else []),
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
