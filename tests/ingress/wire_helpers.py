"""Shared test helpers for the wire/codec tests: a schema with every field type and valid events.

Not a conftest.py on purpose: tests/ingress also holds the lead's router tests.
"""
from __future__ import annotations

import numpy as np

from shm.schema import Schema
from ingress.codec import Codec

ALL_TYPES = {
    "id": "u64", "a_u8": "u8", "a_u16": "u16", "a_u32": "u32",
    "b_i8": "i8", "b_i16": "i16", "b_i32": "i32", "b_i64": "i64",
    "x_f32": "f32", "y_f64": "f64", "flag": "bool",
    "tag": "bytes1", "name": "bytes7", "blob": "bytes64",
}
SCHEMA = Schema.build(ALL_TYPES, "id")
MAX_BATCH = 64
MAX_FRAME = 64 * 1024


def make_codec(max_batch: int = MAX_BATCH, max_frame_bytes: int = MAX_FRAME) -> Codec:
    return Codec(SCHEMA, max_batch, max_frame_bytes)


def event(i: int = 0, **over) -> dict:
    """A valid JSON event for SCHEMA, varied by ``i``; keyword arguments override fields."""
    ev = {"id": 2 ** 64 - 1 - i, "a_u8": i % 256, "a_u16": 65535, "a_u32": 7 + i,
          "b_i8": -128, "b_i16": -5, "b_i32": 2 ** 31 - 1, "b_i64": -2 ** 63 + i,
          "x_f32": 0.5, "y_f64": 12.25 + i, "flag": i % 2 == 0,
          "tag": "Z", "name": "été", "blob": "b" * 64}
    ev.update(over)
    return ev


def records(n: int = 3) -> np.ndarray:
    return make_codec().events.to_records([event(i) for i in range(n)])
