"""A tiny real ROUTER decision server for client tests (a thread, real ZeroMQ, real Codec).

Decides score = y_f64, block >= 80, review >= 50, else allow; rule 0 ("big", enforce) fires when
score >= 50 and rule 1 ("flagged", shadow) when ``flag`` is true. ``drop`` (a count N, or a set
of 0-based arrival numbers) makes it swallow the first N (or those) requests without replying (to force client timeouts). Every request it receives
is recorded as (client_id, request_id, flags) or ("error", code).
"""
from __future__ import annotations

import threading

import numpy as np
import zmq

from shm.types import RESPONSE_SLOT_DTYPE
from ingress.codec import Codec, RulesetMeta, split_envelope
from ingress.wire import WireError

META = RulesetMeta(1, "test@1", ("big", "flagged"), ("enforce", "shadow"))


def decide(records: np.ndarray) -> np.ndarray:
    s = np.zeros(len(records), RESPONSE_SLOT_DTYPE)
    score = records["y_f64"]
    s["score"] = score
    s["action"] = np.where(score >= 80, 2, np.where(score >= 50, 1, 0))
    s["generation"] = 1
    big, flagged = score >= 50, records["flag"]
    s["nfired"] = big.astype(np.uint16) + flagged
    s["fired"][:, 0] = np.where(big, 0, 1)
    s["fired"][:, 1] = 1
    return s


class DecisionServer:
    def __init__(self, codec: Codec, drop: int | set = 0, curve_secret: bytes | None = None,
                 curve_public: bytes | None = None, endpoint: str = "tcp://127.0.0.1"):
        self.codec = codec
        self.drop = set(range(drop)) if isinstance(drop, int) else set(drop)
        self.seen: list = []
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if curve_secret is not None:
            self.sock.curve_server = True
            self.sock.curve_secretkey, self.sock.curve_publickey = curve_secret, curve_public
        if endpoint.startswith("tcp://"):
            port = self.sock.bind_to_random_port(endpoint)
            self.endpoint = f"{endpoint}:{port}"
        else:
            self.sock.bind(endpoint)
            self.endpoint = endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "DecisionServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20, zmq.POLLIN):
                continue
            frames = self.sock.recv_multipart()
            try:
                env, body = split_envelope(frames)
            except WireError as e:
                self.seen.append(("error", e.code))
                self.sock.send_multipart(e.envelope + [self.codec.error_reply(e)])
                continue
            try:
                req = self.codec.decode(body)
            except WireError as e:
                self.seen.append(("error", e.code))
                self.sock.send_multipart(env + [self.codec.error_reply(e)])
                continue
            self.seen.append((req.client_id, req.request_id, req.flags))
            if len(self.seen) - 1 in self.drop:
                continue
            reply = self.codec.encode_reply(req, decide(req.records), {1: META})
            self.sock.send_multipart(env + [reply])
