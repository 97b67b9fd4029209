"""shm.descriptor: the layout vocabulary (placement, padding, groups, numpy records), and the
layouts built from it: shared fields own their cache lines, and each kernel constant is a
plain int taken from its descriptor."""
from __future__ import annotations

import numpy as np
import pytest

from shm import control as C
from shm import layout as L
from shm.descriptor import CACHE_LINE_BYTES, Builder, LayoutError
from shm.features import table as FT


def test_fields_are_placed_at_their_alignment_and_the_end_is_padded():
    lay = (Builder("t").field("a", fmt=np.uint8).field("b", fmt=np.uint32).field("c", 8, align=64)
           .reserve(16, align=64).field("d", fmt=np.uint16).build(align=64))
    assert lay.table() == [(0, "a", 1), (4, "b", 4), (64, "c", 8), (128, "_reserved0", 16), (144, "d", 2)]
    assert (lay.size, lay.align, lay.words) == (192, 64, 24)
    assert lay.word("c") == 8 and lay.offset("d") == 144
    with pytest.raises(LayoutError, match="field='b' offset=4: not word aligned"):
        lay.word("b")
    with pytest.raises(LayoutError, match="field='nope'"):
        lay.offset("nope")


def test_a_group_keeps_its_relative_offsets_wherever_it_is_placed():
    g = Builder("g").field("x", fmt=np.float64).field("y", fmt=np.uint8).build()
    one = Builder("one").field("p", fmt=np.uint8).group(g).field("z", fmt=np.uint8).build()
    two = Builder("two").field("q", 24).group(g, prefix="g.").build(align=8)
    assert one.table() == [(0, "p", 1), (8, "x", 8), (16, "y", 1), (17, "z", 1)]
    assert two.table() == [(0, "q", 24), (24, "g.x", 8), (32, "g.y", 1)] and two.size == 40
    assert one.offset("y") - one.offset("x") == two.offset("g.y") - two.offset("g.x")


def test_the_numpy_record_has_the_layouts_offsets_and_skips_padding():
    lay = Builder("r").field("a", fmt=np.uint8).reserve(7).field("b", fmt=np.int64).build(align=32)
    dt = lay.dtype()
    assert dt.names == ("a", "b") and [dt.fields[n][1] for n in dt.names] == [0, 8]
    assert dt.itemsize == 32 and not dt.isalignedstruct
    with pytest.raises(LayoutError, match="fields=\\['b'\\]: no numpy type"):
        Builder("u").field("b", 8).build().dtype()


@pytest.mark.parametrize("bad", [dict(size=-1), dict(size=8, align=3), dict(size=8, align=0)])
def test_bad_declarations_are_refused_with_key_and_value(bad):
    with pytest.raises(LayoutError, match="layout='t' field='x'"):
        Builder("t").field("x", **bad)


def test_a_field_declared_twice_is_refused():
    with pytest.raises(LayoutError, match="field='x': declared twice"):
        Builder("t").field("x", 8).field("x", 8)
    g = Builder("g").field("x", 8).build()
    with pytest.raises(LayoutError, match="field='x': declared twice"):
        Builder("t").field("x", 8).group(g)


def test_shared_fields_own_their_cache_lines():
    for f in L.RING_HEADER:
        assert f.offset % L.FIELD_STRIDE_BYTES == 0
    for name in FT.COUNTERS + ("stripes",):
        assert FT.TABLE_HEADER.offset(name) % CACHE_LINE_BYTES == 0
    for section in (C.SUPERVISOR_SECTION, C.INGRESS_SECTION, C.WORKER_SECTION):
        assert section.size % CACHE_LINE_BYTES == 0
        assert all(f.offset % CACHE_LINE_BYTES == 0 for f in section)


def test_the_control_block_is_its_sections_in_a_row():
    lay = C.block_layout(2)
    assert C.block_layout(2) is lay                         # computed once per size
    s, i, w = C.SUPERVISOR_SECTION.size, C.INGRESS_SECTION.size, C.WORKER_SECTION.size
    assert lay.offset("ingress.requests") == s
    assert lay.offset("worker1.batches") == s + i + w
    assert lay.size == C.BlockLayout(2).nbytes == s + i + 2 * w


def test_kernel_constants_are_plain_ints():
    """Numba compiles a module-level int in as a literal; a numpy scalar or an object would
    be a different type (and a different key in the kernel cache)."""
    names = {L: [n for n in dir(L) if n.endswith(("_WORD", "_OFFSET"))],
             FT: ["W_MAGIC", "W_VERSION", "W_CAPACITY", "W_SLOT_WORDS", "C_FILL", "C_EVICTIONS",
                  "C_LATE", "C_TIMEOUTS", "C_FULL", "STRIPE_BASE", "STRIPE_STRIDE", "SLOT_BASE",
                  "KEY_OFF", "META_OFF", "PAYLOAD_OFF"]}
    for mod, consts in names.items():
        for n in consts:
            assert type(getattr(mod, n)) is int, f"{mod.__name__}.{n}"
