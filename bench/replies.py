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

from shm.types import DecisionFlag, ErrorCode
from ingress import wire

DUPLICATE = "DUPLICATE"       # answered from the idempotency window: a bench bug
BAD_REPLY = "BAD_REPLY"       # undecodable reply, or a reply to another request
NO_REPLY = "NO_REPLY"         # no reply within the client timeout or the final drain
_FIRST_FLAGS_ERROR = struct.Struct("<xBH")   # flags and error of a decision record
# a plain int: `int & IntFlag` builds an enum member, which the load generator paid on every
# engine reply and never on the echo's (docs/BENCH.md has the timeit command and figures)
_DUP = int(DecisionFlag.DUPLICATE)
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


# A one-decision reply read in one struct call: the header, then the decision's flags and
# error, instead of unpack_reply_header and a second unpack (docs/BENCH.md): the load generator
# shares the CPUs with the server it measures, so its cost per reply is the server's loss.
_ONE = struct.Struct("<" + wire.REPLY_HEADER.format.lstrip("<=") + _FIRST_FLAGS_ERROR.format.lstrip("<"))
_ONE_LEN = wire.REPLY_HEADER_SIZE + wire.DECISION_SIZE
_GOOD = (wire.REPLY_MAGIC, wire.PROTOCOL_VERSION, 0, 1, 0)
assert _ONE.size == wire.REPLY_HEADER_SIZE + _FIRST_FLAGS_ERROR.size


def _binary(reply: bytes, request_id: int) -> tuple[str | None, list[str]]:
    if len(reply) == _ONE_LEN:
        magic, version, error, count, msg_len, rid, flags, err = _ONE.unpack_from(reply)
        if (magic, version, error, count, msg_len) == _GOOD:
            if rid != request_id:
                return BAD_REPLY, []
            if not err and not flags & _DUP:
                return None, []
            return None, ([code_name(err)] if err else []) + ([DUPLICATE] if flags & _DUP else [])
    try:
        rid, error, count, _ = wire.unpack_reply_header(reply)
    except ValueError:
        return BAD_REPLY, []
    if error:
        return code_name(error), []
    if rid != request_id:
        return BAD_REPLY, []
    dec = np.frombuffer(reply, wire.DECISION_DTYPE, count=count, offset=wire.REPLY_HEADER_SIZE)
    errs = dec["error"]
    dup = int(np.count_nonzero(dec["flags"] & np.uint8(_DUP)))
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
