"""The event schema: one aligned numpy structured dtype, the single source of truth.

The same dtype is the wire record (binary protocol), the event part of a request ring slot
and the record type the rule kernels read. No event field is named in engine code: every
consumer asks the Schema.

Field types: u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool bytesN (1 <= N <= 64) ipv4.
bytesN is numpy 'S{N}': zero-padded on the wire, trailing zeros stripped on the way back.
ipv4 is a u32 in the record, the kernels and the schema hash (the same bytes as u32, so a
binary client sees no difference); it is a dotted quad in JSON, lists and explain (shm.ipv4).
The record is laid out with numpy's C alignment rules (``align=True``) and its size is
rounded up to a multiple of 8 bytes, so a C struct with the same members in the same order
has the same layout (``c_header()`` prints it).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

_SCALARS = {
    "u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64,
    "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
    "f32": np.float32, "f64": np.float64, "bool": np.bool_,
}
_C_TYPES = {
    "u8": "uint8_t", "u16": "uint16_t", "u32": "uint32_t", "u64": "uint64_t",
    "i8": "int8_t", "i16": "int16_t", "i32": "int32_t", "i64": "int64_t",
    "f32": "float", "f64": "double", "bool": "uint8_t",
}
_STORAGE = {"ipv4": "u32"}    # types stored as another scalar: the record holds the scalar
_BYTES_RE = re.compile(r"^bytes([0-9]+)$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_BYTES = 64
MAX_FIELDS = 256


class SchemaError(ValueError):
    """A schema declaration is invalid; the message names the key and the value."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str          # as declared: 'u64', 'f64', 'bytes2', ...
    kind: str          # 'uint' | 'int' | 'float' | 'bool' | 'bytes'
    size: int          # bytes in the record
    lo: int | float | None = None   # integer range (None for floats/bytes)
    hi: int | float | None = None

    @property
    def scalar(self) -> str:
        """The scalar type the record holds ('u32' for ipv4; else ``type``)."""
        return _STORAGE.get(self.type, self.type)


def parse_field_type(name: str, type_name: object) -> FieldSpec:
    if not isinstance(type_name, str):
        raise SchemaError(f"schema.fields.{name}: type must be a string, got {type_name!r}")
    m = _BYTES_RE.match(type_name)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= MAX_BYTES:
            raise SchemaError(f"schema.fields.{name}: bytesN needs 1 <= N <= {MAX_BYTES}, got {type_name!r}")
        return FieldSpec(name, type_name, "bytes", n)
    if type_name not in _SCALARS and type_name not in _STORAGE:
        allowed = " ".join(list(_SCALARS) + ["bytesN"] + list(_STORAGE))
        raise SchemaError(f"schema.fields.{name}: unknown type {type_name!r} (allowed: {allowed})")
    dt = np.dtype(_SCALARS[_STORAGE.get(type_name, type_name)])
    if type_name == "bool":
        return FieldSpec(name, type_name, "bool", 1, 0, 1)
    if dt.kind == "f":
        return FieldSpec(name, type_name, "float", dt.itemsize)
    info = np.iinfo(dt)
    kind = "uint" if dt.kind == "u" else "int"
    return FieldSpec(name, type_name, kind, dt.itemsize, int(info.min), int(info.max))


@dataclass(frozen=True)
class Schema:
    """Validated schema. Build with ``Schema.build(fields, shard_key)``."""
    fields: tuple[FieldSpec, ...]
    shard_key: str
    dtype: np.dtype = field(compare=False)
    hash: int = 0      # u64, stable across runs and machines

    @staticmethod
    def build(fields: Mapping[str, object], shard_key: str) -> "Schema":
        if not isinstance(fields, Mapping) or not fields:
            raise SchemaError("schema.fields: must be a non-empty mapping of name -> type")
        if len(fields) > MAX_FIELDS:
            raise SchemaError(f"schema.fields: at most {MAX_FIELDS} fields, got {len(fields)}")
        specs = []
        for name, t in fields.items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise SchemaError(f"schema.fields: field name {name!r} must match [a-z][a-z0-9_]*")
            specs.append(parse_field_type(name, t))
        names = [s.name for s in specs]
        if shard_key not in names:
            raise SchemaError(f"schema.shard_key: {shard_key!r} is not a field (fields: {', '.join(names)})")
        if next(s for s in specs if s.name == shard_key).kind not in ("uint", "int"):
            raise SchemaError(f"schema.shard_key: {shard_key!r} must be an integer field")
        dtype = record_dtype(specs)
        # the stored scalar, not the declared type: the hash guards the binary layout
        canon = ";".join(f"{s.name}:{s.scalar}" for s in specs) + f"|{shard_key}|{dtype.itemsize}"
        h = int.from_bytes(hashlib.blake2b(canon.encode(), digest_size=8).digest(), "little")
        return Schema(tuple(specs), shard_key, dtype, h)

    def field(self, name: str) -> FieldSpec:
        for s in self.fields:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.fields)

    @property
    def record_size(self) -> int:
        return self.dtype.itemsize

    def c_header(self, struct_name: str = "risk_event") -> str:
        """The record layout as a C struct with explicit padding (little-endian, x86-64):
        an include guard, and static assertions of the size and of every offset that hold
        in C11 (``_Static_assert``) and C++11 (``static_assert``)."""
        guard = f"{struct_name.upper()}_H"
        lines = ["/* generated by `risk-engine schema --c-header`; do not edit */",
                 f"#ifndef {guard}", f"#define {guard}",
                 "#include <stddef.h>", "#include <stdint.h>",
                 f"#define RISK_SCHEMA_HASH 0x{self.hash:016x}ULL",
                 f"#define RISK_RECORD_SIZE {self.record_size}",
                 f"struct {struct_name} {{"]
        pos = 0
        pad = 0
        for s in self.fields:
            off = self.dtype.fields[s.name][1]
            if off > pos:
                lines.append(f"    uint8_t _pad{pad}[{off - pos}];")
                pad += 1
            if s.kind == "bytes":
                lines.append(f"    char {s.name}[{s.size}];  /* offset {off}, zero-padded */")
            elif s.type == "ipv4":
                lines.append(f"    uint32_t {s.name};  /* offset {off}, IPv4: 10.0.0.1 = 0x0A000001 */")
            else:
                lines.append(f"    {_C_TYPES[s.type]} {s.name};  /* offset {off} */")
            pos = off + s.size
        if self.record_size > pos:
            lines.append(f"    uint8_t _pad{pad}[{self.record_size - pos}];")
        lines.append("};")
        check = f"{struct_name.upper()}_STATIC_ASSERT"
        lines += ["#ifdef __cplusplus", f"#define {check}(c, m) static_assert(c, m)",
                  "#else", f"#define {check}(c, m) _Static_assert(c, m)", "#endif",
                  f"{check}(sizeof(struct {struct_name}) == {self.record_size}, \"record size\");"]
        lines += [f"{check}(offsetof(struct {struct_name}, {s.name}) == {self.dtype.fields[s.name][1]}, "
                  f"\"offset of {s.name}\");" for s in self.fields]
        lines += [f"#undef {check}", f"#endif /* {guard} */"]
        return "\n".join(lines) + "\n"


def record_dtype(specs: tuple[FieldSpec, ...] | list[FieldSpec]) -> np.dtype:
    """Aligned structured dtype, itemsize rounded up to a multiple of 8."""
    parts = []
    for s in specs:
        parts.append((s.name, f"S{s.size}" if s.kind == "bytes" else _SCALARS[s.scalar]))
    dt = np.dtype(parts, align=True)
    size = (dt.itemsize + 7) // 8 * 8
    if size != dt.itemsize:
        dt = np.dtype({"names": dt.names, "formats": [dt.fields[n][0] for n in dt.names],
                       "offsets": [dt.fields[n][1] for n in dt.names], "itemsize": size,
                       "aligned": True})
    return dt


def take_rows(records: np.ndarray, which) -> np.ndarray:
    """``records[which]`` (a mask or indexes) copied as bytes, padding included: fancy
    indexing copies a padded record dtype field by field and leaves the padding undefined
    (a journal record's check word covers it; a wire record's is sent as zeros)."""
    rows = np.ascontiguousarray(records).view(np.uint8).reshape(len(records), records.dtype.itemsize)
    return np.ascontiguousarray(rows[which]).reshape(-1).view(records.dtype)
