"""Attaching to something that is not the expected ring fails with a clear key=value error."""
from __future__ import annotations

import numpy as np
import pytest

from shm.types import RESPONSE_SLOT_DTYPE
from shm import layout as L
from shm.ring import OneToOneRing, RingAttachError
from shm.segment import Segment
from tests.shm.peers import MSG_DTYPE


def test_missing_segment(instance):
    with pytest.raises(RingAttachError, match="no such segment"):
        OneToOneRing.attach(f"/risk-engine.{instance}.1.nothere", MSG_DTYPE)


def test_not_our_name():
    with pytest.raises(RingAttachError, match="not a risk-engine segment name"):
        OneToOneRing.attach("/some-other-app", MSG_DTYPE)


def test_short_name_needs_instance_and_owner():
    with pytest.raises(RingAttachError, match="instance= and owner_pid="):
        OneToOneRing.attach("req0", MSG_DTYPE)


def test_garbage_segment_has_wrong_magic(instance):
    seg = Segment.create(instance, "garbage", L.segment_bytes(8, 64))
    seg.array(np.uint8)[:] = np.random.default_rng(1).integers(0, 256, seg.size, dtype=np.uint8)
    try:
        with pytest.raises(RingAttachError, match=r"magic=0x[0-9a-f]{16}: not an initialised ring"):
            OneToOneRing.attach(seg.name, MSG_DTYPE)
    finally:
        seg.unlink()


def test_zeroed_segment_is_not_initialised(instance):
    seg = Segment.create(instance, "zeros", L.segment_bytes(8, 64))
    try:
        with pytest.raises(RingAttachError, match="magic=0x0000000000000000"):
            OneToOneRing.attach(seg.name, MSG_DTYPE)
    finally:
        seg.unlink()


def test_segment_smaller_than_header(instance):
    seg = Segment.create(instance, "tiny", 100)
    try:
        with pytest.raises(RingAttachError, match="size=100: smaller than a ring header"):
            OneToOneRing.attach(seg.name, MSG_DTYPE)
    finally:
        seg.unlink()


def test_wrong_slot_size_and_wrong_fields(instance):
    ring = OneToOneRing.create("typed", 8, MSG_DTYPE, instance=instance)
    same_size = np.dtype({"names": ["other"], "formats": ["<u8"], "offsets": [0], "itemsize": 64})
    try:
        wider = np.dtype({"names": ["seq"], "formats": ["<u8"], "offsets": [0], "itemsize": 128})
        with pytest.raises(RingAttachError, match="slot_size=64: caller's slot_dtype has itemsize 128"):
            OneToOneRing.attach(ring.name, wider)
        with pytest.raises(RingAttachError, match="slot_dtype_hash"):
            OneToOneRing.attach(ring.name, RESPONSE_SLOT_DTYPE)
        with pytest.raises(RingAttachError, match="slot_dtype_hash=0x[0-9a-f]+: differs"):
            OneToOneRing.attach(ring.name, same_size)
    finally:
        ring.unlink()
        ring.close()


def test_truncated_slot_area_and_corrupt_capacity(instance):
    ring = OneToOneRing.create("model", 8, MSG_DTYPE, instance=instance)
    header = ring.segment.array(np.uint8, 0, L.HEADER_BYTES).copy()
    ring.unlink()
    ring.close()
    seg = Segment.create(instance, "cut", L.HEADER_BYTES + 64)
    try:
        seg.array(np.uint8, 0, L.HEADER_BYTES)[:] = header
        with pytest.raises(RingAttachError, match=r"capacity=8 x slot_size=64 needs \d+ B"):
            OneToOneRing.attach(seg.name, MSG_DTYPE)
        seg.array(np.int64, 0, L.HEADER_WORDS)[L.CAPACITY_WORD] = 6
        with pytest.raises(RingAttachError, match="corrupt header: capacity=6"):
            OneToOneRing.attach(seg.name, MSG_DTYPE)
        seg.array(np.int64, 0, L.HEADER_WORDS)[L.LAYOUT_VERSION_WORD] = 99
        with pytest.raises(RingAttachError, match="layout_version=99"):
            OneToOneRing.attach(seg.name, MSG_DTYPE)
    finally:
        seg.unlink()


def test_create_refuses_bad_geometry_and_existing_name(instance):
    with pytest.raises(L.LayoutError, match="capacity=12"):
        OneToOneRing.create("bad", 12, MSG_DTYPE, instance=instance)
    with pytest.raises(L.LayoutError, match="itemsize=8"):
        OneToOneRing.create("bad", 8, np.dtype("u8"), instance=instance)
    ring = OneToOneRing.create("dup", 8, MSG_DTYPE, instance=instance)
    try:
        with pytest.raises(OSError, match="already exists"):
            OneToOneRing.create("dup", 8, MSG_DTYPE, instance=instance)
    finally:
        ring.unlink()
        ring.close()
