"""The ingress's replies: every frame the ROUTER socket sends goes through ``Replies``.

Decisions (in the request's transport, JSON with each generation's ruleset labels), errors
with their stable codes, the cheap OVERLOADED of the load shedder, and the per-transport
request counts of the error replies. Shared by the router, the general path and the fast
path, which only hand it envelopes and bodies.
"""
from __future__ import annotations

import struct

import numpy as np
import zmq

from shm.runtime import rundir
from shm.types import ErrorCode
from ingress.codec import Codec, RulesetMeta
from ingress.sockopts import backend_send
from ingress import wire
from ingress.wire import WireError

_MORE_NOWAIT, _NOWAIT = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)   # per socket call
TRANSPORT = {"binary": 0, "json": 1}
SHED_MESSAGE = "shedding load: the front door is behind; retry later"
_SHED_BYTES = SHED_MESSAGE.encode()
_OVERLOADED = int(ErrorCode.OVERLOADED)
_RID = struct.Struct("<Q")             # the request id of a binary request header
_RID_AT = wire.REQUEST_HEADER_DTYPE.fields["request_id"][1]
IDEMPOTENCY_CONFLICT_MESSAGE = "request_id already used by this client_id for other events"


class Replies:
    def __init__(self, codec: Codec, run_dir: str, c_requests: np.ndarray):
        """``c_requests``: the (transport x code) request counters of the control block."""
        self.codec = codec
        self.run_dir = run_dir
        self.c_requests = c_requests
        self.metas: dict[int, RulesetMeta] = {}
        self._send = None

    def bind(self, sock: zmq.Socket) -> None:
        """Send on ``sock`` (the ROUTER socket, once it is bound)."""
        self._send = backend_send(sock)

    def meta(self, generation: int) -> RulesetMeta | None:
        m = self.metas.get(generation)
        if m is None:
            try:
                spec = rundir.read_generation(self.run_dir, generation)
            except OSError:
                return None
            m = self.metas[generation] = RulesetMeta(generation, spec["label"],
                                                     tuple(spec["rule_ids"]), tuple(spec["modes"]))
        return m

    def error(self, envelope, e: WireError) -> None:
        """The error reply of ``e`` (counted), if the message had an envelope to answer."""
        self.c_requests[TRANSPORT[e.kind], int(e.code)] += 1
        if envelope:
            self.send_frames(envelope, self.codec.error_reply(e), e.kind)

    def conflict(self, envelope, req) -> None:
        """The idempotency key of ``req`` belongs to a request with other events (in flight
        or decided): refused, never answered with that request's decision."""
        self.error(envelope, WireError(
            ErrorCode.IDEMPOTENCY_CONFLICT, IDEMPOTENCY_CONFLICT_MESSAGE,
            request_id=req.request_id, kind=req.kind))

    def shed(self, frames: list) -> None:
        """OVERLOADED without decoding. A binary reply is a header packed onto a prepared
        message (the error path's exception and formatting cost as much again: shedding
        must be the cheapest thing the ingress does)."""
        body = frames[-1]
        if body[:1] == b"{":
            return self.error(frames[:-1], WireError(
                ErrorCode.OVERLOADED, SHED_MESSAGE, request_id=None, kind="json"))
        rid = _RID.unpack_from(body, _RID_AT)[0] if len(body) >= wire.REQUEST_HEADER_SIZE else 0
        self.c_requests[0, _OVERLOADED] += 1
        self.send_frames(frames[:-1], wire.pack_reply_header(_OVERLOADED, 0, rid, len(_SHED_BYTES))
                         + _SHED_BYTES, "binary")

    def send_decision(self, envelope, req, slots: np.ndarray, fired: dict | None = None) -> None:
        """``fired``: decision index -> every fired rule index (JSON, more than MAX_FIRED)."""
        metas = None
        if req.kind == "json":
            metas = {g: self.meta(g) for g in set(slots["generation"].tolist())}
            metas = {g: m for g, m in metas.items() if m is not None}
        self.send_frames(envelope, self.codec.encode_reply(req, slots, metas, fired), req.kind)

    def send_rules(self, envelope, req) -> None:
        """The rule ids of generation ``req.rules_of`` (a rules request), or UNKNOWN_GENERATION."""
        meta = self.meta(req.rules_of)
        if meta is None:
            return self.error(envelope, WireError(
                ErrorCode.UNKNOWN_GENERATION, f"generation {req.rules_of} was never loaded by this engine",
                request_id=req.request_id, kind="json"))
        self.c_requests[TRANSPORT["json"], 0] += 1
        self.send_frames(envelope, self.codec.rules_reply(req.request_id, meta), "json")

    def send_frames(self, envelope, body, kind: str) -> None:
        """One send per frame with int flags (send_multipart with enum flags cost 3x here).
        A ROUTER drops what it cannot queue, so the Again branch is a safety net."""
        send = self._send
        try:
            for f in envelope:
                send(f, _MORE_NOWAIT)
            send(body, _NOWAIT)
        except zmq.Again:                          # the client stopped reading: drop, counted
            self.c_requests[TRANSPORT[kind], int(ErrorCode.INTERNAL)] += 1
