"""The layout vocabulary of every structure whose bytes live in shared memory (or, copied
word by word, in the journal): one descriptor per structure, as agrona's
``RingBufferDescriptor`` is for its ring.

A ``Layout`` is an immutable table of named fields, each with a byte *offset* from the start
of the structure, a *size* in bytes and, for numpy records, a numpy type. It is built once,
when the structure's module is imported, by a ``Builder`` that places each field at a running
offset rounded up to the field's alignment. Cache-line padding is declared, never implied by
a hand-written number: a field that must own its cache line(s) says ``align=...`` and the
layout's end is rounded with ``build(align=...)``; a gap kept for later is ``reserve(...)``.

    RING_HEADER = (Builder("ring header")
                   .field("magic", 8, align=128)
                   .field("capacity", 8, align=128)
                   .build(align=128))
    RING_HEADER.offset("capacity") == 128; RING_HEADER.word("capacity") == 16

Kernels read plain ints: each structure's module assigns ``X_WORD = LAYOUT.word("x")`` (or
``X_OFFSET``) at import. Numba freezes a module-level int into the compiled code as a
literal, so deriving the constant here costs nothing per event; for the same reason
shm.jitcache counts this file and every module that imports shm.descriptor among the
sources of compiled code (a changed offset must recompile the cached kernels).

Vocabulary: an *offset* is a byte distance from the start of the structure; a *word* is an
offset // 8, the index when the structure is addressed as an (u)int64 array; ``size`` of a
layout is its whole extent in bytes, end padding included. This module imports nothing of
ours (it sits under shm.types).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CACHE_LINE_BYTES = 64
WORD_BYTES = 8


class LayoutError(ValueError):
    """A layout or a geometry is invalid; the message names the key and the value."""


def round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class Field:
    name: str
    offset: int                  # bytes from the start of the structure
    size: int                    # bytes
    fmt: np.dtype | None = None  # numpy type, for layouts that are numpy records
    reserved: bool = False       # explicit padding (Builder.reserve): no one reads or writes it

    @property
    def end(self) -> int:
        return self.offset + self.size


class Layout:
    """A structure's fields by name (module doc). Build with ``Builder``."""

    __slots__ = ("name", "fields", "size", "align", "_by_name")

    def __init__(self, name: str, fields: tuple[Field, ...], size: int, align: int):
        self.name, self.fields, self.size, self.align = name, fields, size, align
        self._by_name = {f.name: f for f in fields}

    def __getitem__(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise LayoutError(f"layout={self.name!r} field={name!r}: no such field") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.fields)

    def offset(self, name: str) -> int:
        return self[name].offset

    def word(self, name: str) -> int:
        """The field's index when the structure is addressed as 8-byte words."""
        off = self[name].offset
        if off % WORD_BYTES:
            raise LayoutError(f"layout={self.name!r} field={name!r} offset={off}: not word aligned")
        return off // WORD_BYTES

    @property
    def words(self) -> int:
        if self.size % WORD_BYTES:
            raise LayoutError(f"layout={self.name!r} size={self.size}: not a whole number of words")
        return self.size // WORD_BYTES

    def dtype(self) -> np.dtype:
        """The numpy record of this layout: same offsets, same itemsize (reserved gaps and
        end padding are numpy padding)."""
        named = [f for f in self.fields if not f.reserved]
        untyped = [f.name for f in named if f.fmt is None]
        if untyped:
            raise LayoutError(f"layout={self.name!r} fields={untyped}: no numpy type")
        return np.dtype({"names": [f.name for f in named], "formats": [f.fmt for f in named],
                         "offsets": [f.offset for f in named], "itemsize": self.size})

    def table(self) -> list[tuple[int, str, int]]:
        """(offset, name, size) of every field, in offset order: for diagrams and tests."""
        return [(f.offset, f.name, f.size) for f in self.fields]

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, size={self.size}, fields={[f.name for f in self.fields]})"


class Builder:
    """Places fields at a running offset (module doc). Each call returns the builder."""

    def __init__(self, name: str = ""):
        self.name = name
        self._fields: list[Field] = []
        self._names: set[str] = set()
        self._pos = 0
        self._align = 1
        self._reserved = 0

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise LayoutError(f"layout={self.name!r} field={name!r}: declared twice")
        self._names.add(name)

    def _place(self, name: str, size: int, align: int, fmt, reserved: bool = False) -> None:
        if not isinstance(size, int) or size < 0:
            raise LayoutError(f"layout={self.name!r} field={name!r} size={size!r}: must be an int >= 0")
        if not isinstance(align, int) or align < 1 or align & (align - 1):
            raise LayoutError(f"layout={self.name!r} field={name!r} align={align!r}: must be a power of two")
        self._claim(name)
        off = round_up(self._pos, align)
        self._fields.append(Field(name, off, size, fmt, reserved))
        self._pos = off + size
        self._align = max(self._align, align)

    def field(self, name: str, size: int | None = None, *, fmt=None, align: int | None = None) -> "Builder":
        """A field of ``size`` bytes (default: ``fmt``'s itemsize) at the next offset that is
        a multiple of ``align`` (default: ``fmt``'s numpy alignment, else 1)."""
        if fmt is not None:
            fmt = np.dtype(fmt)
            size = fmt.itemsize if size is None else size
            align = fmt.alignment if align is None else align
        if size is None:
            raise LayoutError(f"layout={self.name!r} field={name!r}: needs size= or fmt=")
        self._place(name, size, 1 if align is None else align, fmt)
        return self

    def reserve(self, size: int, *, align: int = 1) -> "Builder":
        """Explicit padding: ``size`` bytes nobody uses (kept so the offsets after it stay)."""
        self._place(f"_reserved{self._reserved}", size, align, None, True)
        self._reserved += 1
        return self

    def group(self, layout: Layout, *, prefix: str = "", align: int | None = None) -> "Builder":
        """Every field of a built layout, at one base offset (a multiple of ``align``, default
        the layout's own alignment), keeping their relative offsets: two structures that
        place the same group hold its fields in the same relative layout by construction."""
        align = layout.align if align is None else align
        base = round_up(self._pos, align)
        for f in layout.fields:
            name = prefix + f.name
            self._claim(name)
            self._fields.append(Field(name, base + f.offset, f.size, f.fmt, f.reserved))
        self._pos = base + layout.size
        self._align = max(self._align, align)
        return self

    def build(self, *, align: int = 1) -> Layout:
        """The layout, its size rounded up to a multiple of ``align`` (end padding)."""
        self._align = max(self._align, align)
        return Layout(self.name, tuple(self._fields), round_up(self._pos, align), self._align)
