"""shm.layout: the field table, its diagram and the geometry checks."""
from __future__ import annotations

import re

import numpy as np
import pytest

from shm.types import RESPONSE_SLOT_DTYPE
from shm import layout as L


def _fields():
    return sorted((getattr(L, n), n[:-len("_OFFSET")]) for n in dir(L)
                  if n.endswith("_OFFSET") and n != "SLOTS_OFFSET")


def test_every_field_owns_two_cache_lines_and_slots_are_aligned():
    offs = [o for o, _ in _fields()]
    assert offs == list(range(0, len(offs) * 128, 128))
    assert L.HEADER_BYTES == L.SLOTS_OFFSET == len(offs) * 128
    assert L.SLOTS_OFFSET % 64 == 0
    assert L.PRODUCER_POSITION_OFFSET - L.CONSUMER_POSITION_OFFSET not in range(-127, 128)


def test_diagram_in_docstring_matches_the_constants():
    rows = dict((name, int(off)) for off, name in re.findall(r"\|\s+(\d+) \| ([A-Z_]+)", L.__doc__))
    for off, name in _fields():
        assert rows.get(name) == off, f"diagram row for {name} says {rows.get(name)}, code {off}"
    assert rows["SLOTS_OFFSET"] == L.SLOTS_OFFSET


def test_word_indexes_follow_offsets():
    for off, name in _fields():
        assert getattr(L, name + "_WORD") * 8 == off


@pytest.mark.parametrize("bad", [0, 1, 3, 6, 100, 1 << 25, -4, 2.0, True, "8"])
def test_capacity_must_be_power_of_two(bad):
    with pytest.raises(L.LayoutError, match="capacity="):
        L.check_capacity(bad)


def test_capacity_accepts_powers_of_two():
    assert [L.check_capacity(1 << k) for k in (1, 12, 24)] == [2, 4096, 1 << 24]


def test_slot_dtype_must_be_64_byte_multiple():
    assert L.check_slot_dtype(RESPONSE_SLOT_DTYPE).itemsize % 64 == 0
    with pytest.raises(L.LayoutError, match="itemsize=16"):
        L.check_slot_dtype(np.dtype([("a", "u8"), ("b", "u8")]))


def test_dtype_hash_distinguishes_same_size_layouts():
    a = np.dtype({"names": ["x"], "formats": ["<u8"], "offsets": [0], "itemsize": 64})
    b = np.dtype({"names": ["y"], "formats": ["<u8"], "offsets": [0], "itemsize": 64})
    assert L.slot_dtype_hash(a) != L.slot_dtype_hash(b)
    a2 = np.dtype({"names": ["x"], "formats": ["<u8"], "offsets": [0], "itemsize": 64})
    assert L.slot_dtype_hash(a) == L.slot_dtype_hash(a2)      # built again: same hash
    assert 0 <= L.slot_dtype_hash(a) < 2**63
