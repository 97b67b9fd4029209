"""JSON events <-> schema records, with the same validation on the engine and in clients.

JSON value rules (docs/PROTOCOL.md "JSON"): integer fields take JSON integers only (no 5.0,
no true) within the field's full range (u64/i64 included); float fields take integers or
numbers and reject NaN/Infinity (``NON_FINITE``) and values an f32 cannot hold
(``OUT_OF_RANGE``); bool fields take true/false; bytesN fields take strings of at most N
UTF-8 bytes, zero-padded in the record and returned with trailing zeros stripped; ipv4
fields take a dotted quad (strict: shm.ipv4; a bad one is ``BAD_FIELD``) or, as before
the type existed, a JSON integer in [0, 2**32-1], and are returned as dotted quads.

Each check is one pass of C-level builtins (``all``/``min``/``max``) over a field's column;
the offending event index is searched for only after a check failed.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from shm.ipv4 import format_ipv4, parse_ipv4
from shm.schema import Schema
from shm.types import ErrorCode
from ingress.wire import WireError

_MAX_SHOWN = 40
# smallest magnitude that rounds to infinity in binary32 (round half to even): 2**128 - 2**103
_F32_OVERFLOW = 2.0 ** 128 - 2.0 ** 103
_F64_SAFE = 2.0 ** 1023          # fast path bound; larger magnitudes go to the column checks


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= _MAX_SHOWN else r[:_MAX_SHOWN] + "..."


def _jtype(v) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)


class EventConverter:
    """Converts lists of JSON event objects to records of ``schema.dtype`` and back."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.dtype = schema.dtype
        self.names = frozenset(schema.names)
        self._fields = tuple((f.name, "ipv4" if f.type == "ipv4" else f.kind, f.lo, f.hi, f.size, schema.dtype.fields[f.name][0])
                             for f in schema.fields)
        self._record = record_struct(schema)

    def to_records(self, events: list) -> np.ndarray:
        """Validated records, one per event object; raises ``WireError`` on the first fault."""
        if not events:
            return np.zeros(0, self.dtype)
        names = self.names
        for i, ev in enumerate(events):
            if type(ev) is not dict:
                raise WireError(ErrorCode.BAD_JSON, f"events[{i}]: expected object, got {_jtype(ev)}")
            if ev.keys() != names:
                unknown = sorted(ev.keys() - names)
                if unknown:
                    raise WireError(ErrorCode.UNKNOWN_FIELD,
                                    f"events[{i}]: unknown field {_show(unknown[0])}")
                missing = sorted(names - ev.keys())
                raise WireError(ErrorCode.MISSING_FIELD, f"events[{i}].{missing[0]}: missing")
        if len(events) == 1:
            one = self._one(events[0])
            if one is not None:
                return one
        cols = []
        for name, kind, lo, hi, size, dt in self._fields:
            col = [ev[name] for ev in events]
            if kind in ("uint", "int"):
                cols.append(self._ints(name, col, lo, hi))
            elif kind == "ipv4":
                cols.append(self._ipv4s(name, col, hi))
            elif kind == "float":
                cols.append(self._floats(name, col, dt))
            elif kind == "bool":
                if not all(type(v) is bool for v in col):
                    self._type_error(name, col, lambda v: type(v) is bool, "boolean")
                cols.append(col)
            else:
                cols.append(self._bytes(name, col, size))
        # one struct.pack_into per record into zeroed bytes (padding stays zero): cheaper than
        # numpy structured assignment (~1.5 us per column) and np.array (garbage in padding)
        size, pack_into = self.dtype.itemsize, self._record.pack_into
        buf = bytearray(len(events) * size)
        for k, row in enumerate(zip(*cols)):
            pack_into(buf, k * size, *row)
        return np.frombuffer(buf, self.dtype)

    def _one(self, ev: dict) -> np.ndarray | None:
        """Single-event fast path: scalar checks at least as strict as the column checks;
        None (let the column checks decide and name the fault) when any check fails."""
        vals = []
        for name, kind, lo, hi, size, dt in self._fields:
            v = ev[name]
            t = type(v)
            if kind == "uint" or kind == "int":
                if t is not int or not lo <= v <= hi:
                    return None
            elif kind == "float":
                limit = _F32_OVERFLOW if size == 4 else _F64_SAFE
                if not (t is float and math.isfinite(v) or t is int) or not -limit < v < limit:
                    return None
            elif kind == "bool":
                if t is not bool:
                    return None
            elif kind == "ipv4":
                if t is str:
                    try:
                        v = parse_ipv4(v)
                    except ValueError:
                        return None
                elif t is not int or not 0 <= v <= hi:
                    return None
            else:
                if t is not str:
                    return None
                try:
                    v = v.encode("utf-8")
                except UnicodeEncodeError:
                    return None
                if len(v) > size:
                    return None
            vals.append(v)
        return np.frombuffer(bytearray(self._record.pack(*vals)), self.dtype)

    def to_events(self, records: np.ndarray) -> list[dict]:
        """The inverse of ``to_records``: plain Python values, bytes decoded as UTF-8."""
        cols = []
        for name, kind, *_ in self._fields:
            vals = records[name].tolist()
            if kind == "bytes":
                vals = [v.decode("utf-8", "replace") for v in vals]
            elif kind == "ipv4":
                vals = [format_ipv4(v) for v in vals]
            cols.append((name, vals))
        return [{name: vals[i] for name, vals in cols} for i in range(len(records))]

    # --- per-kind column checks --------------------------------------------------------------

    @staticmethod
    def _type_error(name, col, ok, expected):
        i = next(i for i, v in enumerate(col) if not ok(v))
        raise WireError(ErrorCode.BAD_FIELD,
                        f"events[{i}].{name}: expected {expected}, got {_jtype(col[i])}")

    def _ints(self, name, col, lo, hi):
        if not all(type(v) is int for v in col):
            self._type_error(name, col, lambda v: type(v) is int, "integer")
        if min(col) < lo or max(col) > hi:
            i = next(i for i, v in enumerate(col) if not lo <= v <= hi)
            raise WireError(ErrorCode.OUT_OF_RANGE,
                            f"events[{i}].{name}: {_show(col[i])} out of range [{lo}, {hi}]")
        return col

    def _ipv4s(self, name, col, hi):
        out = []
        for i, v in enumerate(col):
            if type(v) is str:
                try:
                    v = parse_ipv4(v)
                except ValueError as e:
                    raise WireError(ErrorCode.BAD_FIELD, f"events[{i}].{name}: {e}") from None
            elif type(v) is not int:
                raise WireError(ErrorCode.BAD_FIELD, f"events[{i}].{name}: expected an IPv4 "
                                f"address (\"10.0.0.1\") or an integer, got {_jtype(v)}")
            elif not 0 <= v <= hi:
                raise WireError(ErrorCode.OUT_OF_RANGE,
                                f"events[{i}].{name}: {_show(v)} out of range [0, {hi}]")
            out.append(v)
        return out

    def _floats(self, name, col, dt):
        if not all(type(v) is float or type(v) is int for v in col):
            self._type_error(name, col, lambda v: type(v) in (float, int), "number")
        try:
            finite = all(map(math.isfinite, col))
        except OverflowError:                    # an integer beyond the float range
            i = next(i for i, v in enumerate(col) if not _fits_float(v))
            raise WireError(ErrorCode.OUT_OF_RANGE,
                            f"events[{i}].{name}: {_show(col[i])} does not fit a float") from None
        if not finite:
            i = next(i for i, v in enumerate(col) if not math.isfinite(v))
            raise WireError(ErrorCode.NON_FINITE, f"events[{i}].{name}: {col[i]!r} is not finite")
        if dt == np.float32 and max(map(abs, col)) >= _F32_OVERFLOW:
            i = next(i for i, v in enumerate(col) if abs(v) >= _F32_OVERFLOW)
            raise WireError(ErrorCode.OUT_OF_RANGE, f"events[{i}].{name}: {col[i]!r} out of range for f32")
        return col

    def _bytes(self, name, col, size):
        if not all(type(v) is str for v in col):
            self._type_error(name, col, lambda v: type(v) is str, "string")
        try:
            enc = [v.encode("utf-8") for v in col]
        except UnicodeEncodeError:
            i = next(i for i, v in enumerate(col) if not _utf8_ok(v))
            raise WireError(ErrorCode.BAD_FIELD,
                            f"events[{i}].{name}: string is not valid Unicode") from None
        if col and max(map(len, enc)) > size:
            i = next(i for i, b in enumerate(enc) if len(b) > size)
            raise WireError(ErrorCode.OUT_OF_RANGE,
                            f"events[{i}].{name}: {len(enc[i])} bytes, at most {size} allowed")
        return enc


_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h",
                 "i32": "i", "i64": "q", "f32": "f", "f64": "d", "bool": "?"}


def record_struct(schema: Schema) -> struct.Struct:
    """A struct with the record's exact layout (fields in declaration order, which is offset
    order in ``record_dtype``; explicit padding bytes)."""
    fmt, pos = "<", 0
    for f in schema.fields:
        off = schema.dtype.fields[f.name][1]
        if off < pos:
            raise RuntimeError(f"record_struct: field {f.name} at offset {off} < {pos}")
        fmt += (f"{off - pos}x" if off > pos else "") + \
            (f"{f.size}s" if f.kind == "bytes" else _STRUCT_CODES[f.scalar])
        pos = off + f.size
    fmt += f"{schema.record_size - pos}x" if schema.record_size > pos else ""
    st = struct.Struct(fmt)
    if st.size != schema.record_size:
        raise RuntimeError(f"record_struct: size {st.size} != record_size {schema.record_size}")
    return st


def _fits_float(v) -> bool:
    try:
        float(v)
        return True
    except OverflowError:
        return False


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
