"""The admin plane's client side: one request, one reply (`risk-engine admin`, `stats`, the
tests). Apart from engine.admin, the server, so that those commands load zmq and nothing of
the engine (numba, the compiler)."""
from __future__ import annotations

import json

import zmq


def request(bind: str, req: dict, timeout_ms: int = 60_000, curve_client=None) -> dict:
    """Client side: one request, one reply; raises TimeoutError after ``timeout_ms``."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, timeout_ms)   # a refused CURVE handshake leaves no pipe to send on
    if curve_client:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve_client
    try:
        s.connect(bind)
        try:
            s.send(json.dumps(req).encode())
        except zmq.Again:
            raise TimeoutError(f"admin {bind}: could not send within {timeout_ms} ms") from None
        if not s.poll(timeout_ms):
            raise TimeoutError(f"admin {bind}: no reply within {timeout_ms} ms")
        return json.loads(s.recv())
    finally:
        s.close(0)
