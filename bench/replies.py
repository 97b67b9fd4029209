"""Reply checking for the load generator: every reply is decoded and classified, so errors are
counted, never hidden.

``classify(kind, transport, request, reply, request_id)`` returns ``(code, decision_errors)``:
``code`` is None for a good reply, else a request-level error name (an ``ErrorCode`` name such
as ``OVERLOADED``, or ``BAD_REPLY`` when the reply cannot be decoded or answers another
request); ``decision_errors`` is a list of per-decision error names (``TIMEOUT``,
``OVERLOADED``, ``WORKER_LOST`` ...) for decisions that carry one, empty when all are clean.
A decision flagged DUPLICATE counts as ``DUPLICATE``: the engine answered it from its
idempotency window, so the bench reused a (client id, request id) and measured that cache.
For the echo baseline a good reply is byte-identical to the request.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from engine.types import DecisionFlag, ErrorCode
from ingress import wire

DUPLICATE = "DUPLICATE"       # answered from the idempotency window: a bench bug
BAD_REPLY = "BAD_REPLY"       # undecodable reply, or a reply to another request
NO_REPLY = "NO_REPLY"         # no reply within the client timeout or the final drain
_FIRST_FLAGS_ERROR = struct.Struct("<xBH")   # flags and error of a decision record
assert wire.DECISION_DTYPE.fields["flags"][1] == 1 and wire.DECISION_DTYPE.fields["error"][1] == 2


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"


def classify(kind: str, transport: str, request: bytes, reply: bytes,
             request_id: int) -> tuple[str | None, list[str]]:
    if kind == "echo":
        return (None, []) if reply == request else (BAD_REPLY, [])
    if transport == "binary":
        return _binary(reply, request_id)
    return _json(reply, request_id)


def _binary(reply: bytes, request_id: int) -> tuple[str | None, list[str]]:
    try:
        rid, error, count, _ = wire.unpack_reply_header(reply)
    except ValueError:
        return BAD_REPLY, []
    if error:
        return code_name(error), []
    if rid != request_id:
        return BAD_REPLY, []
    if count == 1:            # one struct call: the numpy decode cost the load generator
        flags, err = _FIRST_FLAGS_ERROR.unpack_from(reply, wire.REPLY_HEADER_SIZE)  # 10 %
        dup = flags & DecisionFlag.DUPLICATE
        if not err and not dup:
            return None, []
        return None, ([code_name(err)] if err else []) + ([DUPLICATE] if dup else [])
    dec = np.frombuffer(reply, wire.DECISION_DTYPE, count=count, offset=wire.REPLY_HEADER_SIZE)
    errs = dec["error"]
    dup = int(np.count_nonzero(dec["flags"] & np.uint8(DecisionFlag.DUPLICATE)))
    if not errs.any() and not dup:
        return None, []
    return None, [code_name(int(e)) for e in errs[np.flatnonzero(errs)]] + [DUPLICATE] * dup


def _json(reply: bytes, request_id: int) -> tuple[str | None, list[str]]:
    try:
        obj = json.loads(reply)
        if "error" in obj:
            return str(obj["error"]["code"]), []
        if obj["request_id"] != request_id:
            return BAD_REPLY, []
        return None, ([str(d["error"]) for d in obj["decisions"] if "error" in d]
                      + [DUPLICATE for d in obj["decisions"] if "DUPLICATE" in d.get("flags", ())])
    except (ValueError, KeyError, TypeError):
        return BAD_REPLY, []
