"""Engine-side codec: frames -> validated ``Request``; decisions -> reply frames.

``Codec(schema, max_batch, max_frame_bytes)`` precomputes everything at construction; per
request ``decode`` does one ``struct.unpack_from`` for the header, one ``np.frombuffer`` +
copy for the body and one compiled pass over the float and bool fields (only a record that
fails it goes through the vectorised checks that name the field); a binary reply is one
compiled call (ingress._batch_kernels). Every malformed input raises ``WireError`` with its
stable ``ErrorCode``: no malformed record is ever returned.
The byte layout is in ``ingress.wire`` and docs/PROTOCOL.md.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping

import numba
import numpy as np

from shm.schema import Schema
from shm.types import ACTION_NAMES, MAX_FIRED, RESPONSE_SLOT_DTYPE, DecisionFlag, ErrorCode
from ingress import _batch_kernels as BK
from ingress import _fast_kernels as FK
from ingress import wire
from ingress.dedup import i64_bits
from ingress.jsonevents import EventConverter, _jtype
from ingress.wire import WireError
from shm.ring import bind_entry

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
SLOT_BYTES = RESPONSE_SLOT_DTYPE.itemsize
_JSON_KEYS = frozenset(("request_id", "client_id", "deadline_ms", "event", "events"))
_RULES_KEYS = frozenset(("request_id", "client_id", "rules"))   # the rules request (PROTOCOL.md 8b)


def _unique_keys(pairs: list) -> dict:
    """object_pairs_hook: an object that names a key twice is refused (json's default keeps
    the last silently, so '"event": A, "event": B' would be decided on B unseen)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup[:40]!r}")
    return d


# strict: json.loads on bytes guesses UTF-16/32 and lets UTF-8-encoded surrogates through
_JSON_DECODE = json.JSONDecoder(object_pairs_hook=_unique_keys).decode
# decision flag -> per-decision error code (binary reply "error" field)
_FLAG_ERRORS = ((DecisionFlag.DEFAULT_TIMEOUT, ErrorCode.TIMEOUT),
                (DecisionFlag.DEFAULT_OVERLOAD, ErrorCode.OVERLOADED),
                (DecisionFlag.DEFAULT_WORKER_LOST, ErrorCode.WORKER_LOST),
                (DecisionFlag.DEFAULT_JOURNAL, ErrorCode.JOURNAL_UNAVAILABLE),
                (DecisionFlag.DEFAULT_REPLICATION, ErrorCode.REPLICATION_FAILED))


def value_checks(schema: Schema) -> np.ndarray:
    """(offset in the record, kind) of every float and bool field: what the compiled value
    check (ingress._fast_kernels.values_ok) tests."""
    rows = []
    for f in schema.fields:
        off = schema.dtype.fields[f.name][1]
        if f.kind == "float":
            rows.append((off, FK.CHECK_F64 if f.size == 8 else FK.CHECK_F32))
        elif f.kind == "bool":
            rows.append((off, FK.CHECK_BOOL))
    return np.array(rows, np.int64).reshape(-1, 2)


@dataclass(slots=True)
class Request:
    """One decoded request. ``records`` is a contiguous array of ``schema.dtype`` that owns
    its memory (safe to keep after the frame is gone); ``deadline_us`` 0 = engine default."""
    kind: str              # 'binary' | 'json'
    request_id: int
    client_id: int
    deadline_us: int
    flags: int             # wire.HeaderFlag bits
    records: np.ndarray
    rules_of: int = -1     # a rules request: the generation whose rule ids are asked for

    @property
    def deadline_ms(self) -> float:
        return self.deadline_us / 1000.0


@dataclass(frozen=True)
class RulesetMeta:
    """What a JSON reply needs to name the rules of one ruleset generation.

    ``rule_ids[i]`` and ``modes[i]`` ('enforce' | 'shadow') belong to rule index i, the
    index a kernel writes into ``fired``; ``label`` is "name@version".
    """
    generation: int
    label: str
    rule_ids: tuple[str, ...]
    modes: tuple[str, ...]

    def __post_init__(self):
        if len(self.rule_ids) != len(self.modes):
            raise ValueError(f"RulesetMeta: rule_ids={len(self.rule_ids)} != modes={len(self.modes)}")
        bad = [m for m in self.modes if m not in ("enforce", "shadow")]
        if bad:
            raise ValueError(f"RulesetMeta: mode={bad[0]!r} (allowed: enforce, shadow)")


def frame_kind(frame) -> str:
    return "json" if len(frame) and frame[0] == wire.JSON_FIRST_BYTE else "binary"


_RID_AT = wire.REQUEST_HEADER_DTYPE.fields["request_id"][1]


def peek_request_id(frame) -> int | None:
    """The request_id of a frame refused before decoding (FRAME_TOO_LARGE, BAD_FRAME), when
    it can be read: a binary header (magic, and all 40 bytes present) or a JSON object with
    a valid request_id. None otherwise. A DEALER client matches replies by this id."""
    n = len(frame)
    if n >= wire.REQUEST_HEADER_SIZE and int.from_bytes(frame[:4], "little") == wire.REQUEST_MAGIC:
        return int.from_bytes(frame[_RID_AT:_RID_AT + 8], "little")
    if n and frame[0] == wire.JSON_FIRST_BYTE:
        try:
            obj = json.loads(bytes(frame))
        except (ValueError, RecursionError):
            return None
        rid = obj.get("request_id") if type(obj) is dict else None
        return rid if type(rid) is int and 0 <= rid <= U64_MAX else None
    return None


def split_envelope(frames: list) -> tuple[list, object]:
    """ROUTER message -> (envelope frames, body frame). Accepted shapes (docs/PROTOCOL.md):

    ``[identity, b"", body]`` (REQ, or DEALER sending a delimiter) and ``[identity, body]``
    (DEALER without delimiter); ``body`` non-empty. Anything else raises
    ``WireError(BAD_FRAME)`` whose ``envelope`` still addresses the sender.
    """
    n = len(frames)
    if n == 3 and len(frames[1]) == 0 and len(frames[2]):
        return frames[:2], frames[2]
    if n == 2 and len(frames[1]):
        return frames[:1], frames[1]
    delim = n >= 3 and len(frames[1]) == 0
    env = frames[:2] if delim else frames[:1]
    first = frames[len(env)] if n > len(env) else b""
    raise WireError(ErrorCode.BAD_FRAME, f"expected [identity, (empty,) body] with a non-empty body, "
                    f"got {n} frames of sizes {[len(f) for f in frames[:8]]}",
                    request_id=peek_request_id(first), kind=frame_kind(first), envelope=list(env))


class Codec:
    """Decode requests and encode replies for one schema (see module doc)."""

    def __init__(self, schema: Schema, max_batch: int, max_frame_bytes: int):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if max_frame_bytes < wire.REQUEST_HEADER_SIZE + schema.record_size:
            raise ValueError(f"max_frame_bytes={max_frame_bytes}: smaller than one request")
        self.schema = schema
        self.max_batch = max_batch
        self.max_frame_bytes = max_frame_bytes
        self.events = EventConverter(schema)
        self._dtype = schema.dtype
        self._rsize = schema.record_size
        self._hash = schema.hash
        # value checks: one take + one test per float width and one for bools, over a 2-D
        # view of the records (record_size is a multiple of 8; fields are naturally aligned)
        self._float_checks = tuple(
            (np.dtype(f"<f{w}"), self._columns(schema, "float", w)) for w in (4, 8)
            if self._columns(schema, "float", w)[0].size)
        self._bool_cols = self._columns(schema, "bool", 1)
        # the compiled pass over every record (the fast path's checks); a failure falls
        # through to the vectorised checks above, which name the event and the field
        self.value_checks = value_checks(schema)
        self._first_bad = bind_entry(BK.first_bad_record, (
            numba.typeof(np.zeros(1, np.uint8)), numba.types.int64, numba.types.int64,
            numba.typeof(self.value_checks)))
        errs = np.zeros(256, np.uint16)
        for flag, code in reversed(_FLAG_ERRORS):
            errs[(np.arange(256) & int(flag)) != 0] = int(code)
        self.flag_errors = errs            # decision flags -> error code (the reply's encoders)
        self._encode = bind_entry(BK.encode_replies, (
            numba.typeof(np.zeros((1, SLOT_BYTES), np.uint8)), numba.typeof(np.zeros(1, np.uint8)),
            numba.types.int64, numba.typeof(errs)))
        self._flag_names = tuple(
            [f.name for f in DecisionFlag if f.value and f.value & v] for v in range(256))

    @staticmethod
    def _columns(schema: Schema, kind: str, width: int) -> tuple[np.ndarray, tuple[str, ...]]:
        """Column numbers (offset / width) and names of the fields of one kind and width."""
        fs = [f for f in schema.fields if f.kind == kind and f.size == width]
        offs = [schema.dtype.fields[f.name][1] for f in fs]
        assert all(o % width == 0 for o in offs), "aligned dtype"
        return np.array([o // width for o in offs], np.intp), tuple(f.name for f in fs)

    # --- requests ----------------------------------------------------------------------------

    def decode(self, frame) -> Request:
        """Validated request from one body frame (bytes-like); raises ``WireError``."""
        n = len(frame)
        if n > self.max_frame_bytes:
            raise WireError(ErrorCode.FRAME_TOO_LARGE,
                            f"frame of {n} bytes over max_frame_bytes={self.max_frame_bytes}",
                            peek_request_id(frame), kind=frame_kind(frame))
        if n == 0:
            raise WireError(ErrorCode.BAD_FRAME, "empty body frame")
        if frame[0] == wire.JSON_FIRST_BYTE:
            return self._decode_json(frame)
        return self._decode_binary(frame)

    def _decode_binary(self, frame) -> Request:
        n = len(frame)
        if n < 4 or int.from_bytes(frame[:4], "little") != wire.REQUEST_MAGIC:
            raise WireError(ErrorCode.BAD_MAGIC, f"magic={bytes(frame[:4])!r}, expected b'RSKQ'")
        if n < wire.REQUEST_HEADER_SIZE:
            raise WireError(ErrorCode.BAD_LENGTH,
                            f"frame of {n} bytes is shorter than the {wire.REQUEST_HEADER_SIZE}-byte header")
        _, version, flags, shash, count, deadline_us, client_id, rid = \
            wire.REQUEST_HEADER.unpack_from(frame)
        if version != wire.PROTOCOL_VERSION:
            raise WireError(ErrorCode.BAD_VERSION,
                            f"version={version}, expected {wire.PROTOCOL_VERSION}", rid)
        if flags & ~wire.KNOWN_HEADER_FLAGS:
            raise WireError(ErrorCode.BAD_FLAGS, f"flags=0x{flags:04x}, known bits "
                            f"0x{wire.KNOWN_HEADER_FLAGS:04x}", rid)
        if shash != self._hash:
            raise WireError(ErrorCode.SCHEMA_MISMATCH,
                            f"schema_hash=0x{shash:016x}, engine has 0x{self._hash:016x}", rid)
        if count == 0 or count > self.max_batch:
            raise WireError(ErrorCode.BAD_COUNT, f"count={count}, must be 1..{self.max_batch}", rid)
        body = n - wire.REQUEST_HEADER_SIZE
        if body != count * self._rsize:
            raise WireError(ErrorCode.BAD_LENGTH, f"body of {body} bytes != count={count} x "
                            f"record_size={self._rsize}", rid)
        # one byte copy (bytearray) instead of a structured copy: several times cheaper
        recs = np.frombuffer(bytearray(memoryview(frame)[wire.REQUEST_HEADER_SIZE:]), self._dtype)
        if self._first_bad(recs.view(np.uint8), count, self._rsize, self.value_checks) < 0:
            return Request("binary", rid, client_id, deadline_us, flags, recs)
        for dt, (cols, names) in self._float_checks:
            vals = recs.view(dt).reshape(count, -1).take(cols, axis=1)
            ok = np.isfinite(vals)
            if np.count_nonzero(ok) != ok.size:
                i, j = (int(x[0]) for x in np.nonzero(~ok))
                raise WireError(ErrorCode.NON_FINITE,
                                f"events[{i}].{names[j]}: {float(vals[i, j])!r} is not finite", rid)
        cols, names = self._bool_cols
        if cols.size:
            raw = recs.view(np.uint8).reshape(count, -1).take(cols, axis=1)
            if np.count_nonzero(raw > 1):
                i, j = (int(x[0]) for x in np.nonzero(raw > 1))
                raise WireError(ErrorCode.OUT_OF_RANGE,
                                f"events[{i}].{names[j]}: bool byte {raw[i, j]} is not 0 or 1", rid)
        return Request("binary", rid, client_id, deadline_us, flags, recs)

    def _decode_json(self, frame) -> Request:
        try:
            obj = _JSON_DECODE(bytes(frame).decode("utf-8"))   # PROTOCOL.md: UTF-8 only
        except (ValueError, RecursionError) as e:      # UnicodeDecodeError is a ValueError
            raise WireError(ErrorCode.BAD_JSON, f"invalid JSON: {str(e)[:120]}", kind="json") from None
        if type(obj) is not dict:
            raise WireError(ErrorCode.BAD_JSON, f"expected an object, got {_jtype(obj)}", kind="json")
        rid = obj.get("request_id")
        if type(rid) is not int or not 0 <= rid <= U64_MAX:
            raise WireError(ErrorCode.BAD_JSON, "request_id: required, an integer in [0, 2**64-1]",
                            kind="json")
        try:
            return self._json_body(obj, rid)
        except WireError as e:
            e.request_id, e.kind = rid, "json"
            raise

    def _json_body(self, obj: dict, rid: int) -> Request:
        if "rules" in obj:
            return self._rules_request(obj, rid)
        if not obj.keys() <= _JSON_KEYS:
            extra = sorted(k for k in obj if k not in _JSON_KEYS)[0]
            raise WireError(ErrorCode.BAD_JSON, f"unknown top-level key {extra[:40]!r}")
        cid = obj.get("client_id", 0)
        if type(cid) is not int or not 0 <= cid <= U64_MAX:
            raise WireError(ErrorCode.BAD_JSON, "client_id: an integer in [0, 2**64-1]")
        dl = obj.get("deadline_ms", 0)
        if not (type(dl) is int or type(dl) is float and math.isfinite(dl)) or dl < 0:
            raise WireError(ErrorCode.BAD_JSON, "deadline_ms: a finite number >= 0")
        if dl > U32_MAX // 1000:      # compare before scaling: 1e308 * 1000 is inf
            raise WireError(ErrorCode.OUT_OF_RANGE, f"deadline_ms={dl} over {U32_MAX // 1000}")
        deadline_us = round(dl * 1000)
        if ("event" in obj) == ("events" in obj):
            raise WireError(ErrorCode.BAD_JSON, "exactly one of 'event' or 'events' is required")
        events = [obj["event"]] if "event" in obj else obj["events"]
        if type(events) is not list:
            raise WireError(ErrorCode.BAD_JSON, f"events: expected an array, got {_jtype(events)}")
        if not 1 <= len(events) <= self.max_batch:
            raise WireError(ErrorCode.BAD_COUNT, f"count={len(events)}, must be 1..{self.max_batch}")
        return Request("json", rid, cid, deadline_us, 0, self.events.to_records(events))

    def _rules_request(self, obj: dict, rid: int) -> Request:
        """``{"request_id": R, "rules": G}``: which rule id each index of generation G is."""
        if not obj.keys() <= _RULES_KEYS:
            extra = sorted(k for k in obj if k not in _RULES_KEYS)[0]
            raise WireError(ErrorCode.BAD_JSON, f"a rules request takes request_id, client_id "
                            f"and rules only, got {extra[:40]!r}")
        g = obj["rules"]
        if type(g) is not int or not 0 <= g <= U32_MAX:
            raise WireError(ErrorCode.BAD_JSON, "rules: a generation, an integer in [0, 2**32-1]")
        return Request("json", rid, 0, 0, 0, np.zeros(0, self._dtype), g)

    # --- replies -----------------------------------------------------------------------------

    def encode_reply(self, req: Request, slots: np.ndarray,
                     ruleset_meta: Mapping[int, RulesetMeta] | RulesetMeta | None = None,
                     fired: Mapping[int, list] | None = None) -> bytes:
        """Reply frame for ``req``; ``slots[i]`` (RESPONSE_SLOT_DTYPE) decides ``records[i]``.

        Binary: one compiled call (the fast path's encoder, N records). JSON: rule ids,
        modes and label from ``ruleset_meta`` (by generation); an unknown generation is named
        "generation:G" and its rules "#index". ``fired[i]``: every fired index of decision i
        when more than MAX_FIRED fired (the worker's fired ring); JSON lists them all.
        """
        n = len(slots)
        if n != len(req.records):
            raise ValueError(f"encode_reply: {n} slots for {len(req.records)} records "
                             f"(request_id={req.request_id})")
        if req.kind == "json":
            return self._json_reply(req.request_id, slots, ruleset_meta, fired or {})
        buf = bytearray(wire.REPLY_HEADER_SIZE + n * wire.DECISION_SIZE)
        raw = np.ascontiguousarray(slots).view(np.uint8).reshape(n, SLOT_BYTES)
        self._encode(raw, np.frombuffer(buf, np.uint8), i64_bits(req.request_id), self.flag_errors)
        return bytes(buf)

    def _json_reply(self, rid: int, slots: np.ndarray, metas, full: Mapping[int, list]) -> bytes:
        if isinstance(metas, RulesetMeta):
            metas = {metas.generation: metas}
        metas = metas or {}
        out = []
        for i, (a, sc, g, fl, nf, fired) in enumerate(zip(
                slots["action"].tolist(), slots["score"].tolist(), slots["generation"].tolist(),
                slots["flags"].tolist(), slots["nfired"].tolist(), slots["fired"].tolist())):
            meta = metas.get(g)
            rules, shadow = [], []
            every = full.get(i)
            if every is not None and len(every) == nf:
                fired, fl = every, fl & ~int(DecisionFlag.FIRED_OVERFLOW)    # nothing left out
            elif nf > MAX_FIRED:
                fl |= DecisionFlag.FIRED_OVERFLOW
            for idx in fired[:nf]:
                if meta is not None and idx < len(meta.rule_ids):
                    (shadow if meta.modes[idx] == "shadow" else rules).append(meta.rule_ids[idx])
                else:
                    rules.append(f"#{idx}")
            d = {"action": ACTION_NAMES[a] if a < len(ACTION_NAMES) else str(a),
                 "score": sc if math.isfinite(sc) else None, "rules": rules,
                 "shadow_rules": shadow, "nfired": nf,
                 "ruleset": meta.label if meta is not None else f"generation:{g}"}
            if fl:
                d["flags"] = self._flag_names[fl]
                err = int(self.flag_errors[fl])
                if err:
                    d["error"] = ErrorCode(err).name
            out.append(d)
        return json.dumps({"request_id": rid, "decisions": out}, separators=(",", ":")).encode()

    @staticmethod
    def rules_reply(rid: int, meta: RulesetMeta) -> bytes:
        """The answer to a rules request: rule_ids[i] and modes[i] belong to rule index i."""
        return json.dumps({"request_id": rid, "generation": meta.generation, "ruleset": meta.label,
                           "rule_ids": list(meta.rule_ids), "modes": list(meta.modes)},
                          separators=(",", ":")).encode()

    def encode_error(self, kind: str, request_id: int | None, code, message: str) -> bytes:
        """Request-level error reply (JSON object, or binary header with N = 0 + message)."""
        code = ErrorCode(code)
        if kind == "json":
            return json.dumps({"request_id": request_id,
                               "error": {"code": code.name, "message": message}},
                              separators=(",", ":")).encode()
        return wire.pack_error_reply(request_id, int(code), message)

    def error_reply(self, e: WireError) -> bytes:
        """``encode_error`` for a caught ``WireError``."""
        return self.encode_error(e.kind, e.request_id, e.code, e.message)
