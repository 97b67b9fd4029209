"""An in-test ROUTER that answers the binary protocol with a fixed mix of good replies, error
replies, per-decision errors, garbage and silence, and counts what it did: the oracle for
"errors are counted, not hidden"."""
from __future__ import annotations

import threading

import numpy as np
import zmq

from shm.types import ErrorCode
from ingress import wire


class ErrorServer:
    """Reply to the i-th request (0-based, in arrival order) by ``i % 7``:
    1 -> request-level OVERLOADED, 2 -> every decision flagged TIMEOUT, 3 -> garbage,
    4 -> no reply at all; otherwise a clean decision reply."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.addr = f"tcp://127.0.0.1:{port}"
        self.counts = {"received": 0, "ok": 0, "overloaded": 0, "timeout_decisions": 0,
                       "garbage": 0, "dropped": 0}
        self._stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop:
            if not poller.poll(50):
                continue
            frames = self.sock.recv_multipart()
            env, body = frames[:-1], frames[-1]
            _, _, _, _, n, _, _, rid = wire.REQUEST_HEADER.unpack_from(body)
            i = self.counts["received"]
            self.counts["received"] += 1
            kind = i % 7
            if kind == 4:
                self.counts["dropped"] += 1
                continue
            if kind == 1:
                reply = wire.pack_error_reply(rid, ErrorCode.OVERLOADED, "ring full")
                self.counts["overloaded"] += 1
            elif kind == 3:
                reply = b"not a reply"
                self.counts["garbage"] += 1
            else:
                dec = np.zeros(n, wire.DECISION_DTYPE)
                if kind == 2:
                    dec["error"] = ErrorCode.TIMEOUT
                    self.counts["timeout_decisions"] += n
                self.counts["ok"] += 1
                reply = wire.pack_reply_header(0, n, rid) + dec.tobytes()
            self.sock.send_multipart(env + [reply])

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()
