"""The one place that owns the memory layout of a ring segment. Nothing else computes an offset.

A ring segment is a header followed by the slot area::

    byte offset  field (each field owns two cache lines = 128 B, so no two fields that
                 different processes write can ever share a cache line: no false sharing,
                 and no adjacent-line prefetch pairing either)
    +-------+--------------------------------------------------------------------------+
    |     0 | MAGIC            'RERING' + layout version; written LAST by the creator  |
    |   128 | LAYOUT_VERSION   LAYOUT_VERSION                          (read-only)     |
    |   256 | CAPACITY         slots, a power of two                   (read-only)     |
    |   384 | SLOT_SIZE        bytes per slot, a multiple of 64        (read-only)     |
    |   512 | SLOT_DTYPE_HASH  63-bit hash of the slot dtype           (read-only)     |
    |   640 | PRODUCER_POSITION          written by producer (release), read by both   |
    |   768 | PRODUCER_CACHED_CONSUMER   producer's private copy of CONSUMER_POSITION  |
    |   896 | PRODUCER_FULL_COUNT        producer: publishes refused (ring full)       |
    |  1024 | PRODUCER_DOORBELL_COUNT    producer: doorbell rings sent                 |
    |  1152 | CONSUMER_POSITION          written by consumer (release), read by both   |
    |  1280 | CONSUMER_CACHED_PRODUCER   consumer's private copy of PRODUCER_POSITION  |
    |  1408 | CONSUMER_SLEEPING          1 while the consumer sleeps on the doorbell   |
    |  1536 | CONSUMER_SLEEP_COUNT       consumer: times it went to sleep              |
    |  1664 | PRODUCER_SEEN_CONSUMER     producer: CONSUMER_POSITION as it last saw it |
    |  1792 | PRODUCER_SEEN_CONSUMER_NS  producer: when it saw that position first     |
    +-------+--------------------------------------------------------------------------+
    |  1920 | SLOTS_OFFSET: slot 0 | slot 1 | ... | slot CAPACITY-1                    |
    |       | (64-byte aligned: the header is a multiple of 128 B and mmap is page     |
    |       |  aligned; each slot is a multiple of 64 B)                               |
    +-------+--------------------------------------------------------------------------+

Every header field is one little-endian int64 at the first byte of its 128-byte block.
``RING_HEADER`` is the descriptor (shm.descriptor); every constant below is derived from it.
The ring code addresses the header as an int64 array, so it uses the ``*_WORD`` constants
(byte offset // 8). Vocabulary: a *position* is a monotonically growing slot counter (never
wraps in practice: 2**63 slots), an *index* is ``position & (CAPACITY - 1)``, an *offset* is a
byte distance from the start of the segment.
"""
from __future__ import annotations

import hashlib

import numpy as np

from shm.descriptor import CACHE_LINE_BYTES, Builder, LayoutError

FIELD_STRIDE_BYTES = 2 * CACHE_LINE_BYTES
SLOT_ALIGN_BYTES = 64

MAGIC = int.from_bytes(b"RERING\x00\x01", "little")   # positive as int64
LAYOUT_VERSION = 2

# The descriptor: each field owns FIELD_STRIDE_BYTES (its own two cache lines), and the
# slots start on the next multiple of it.
_h = Builder("ring header")
for _name in ("magic", "layout_version", "capacity", "slot_size", "slot_dtype_hash",
              "producer_position", "producer_cached_consumer", "producer_full_count",
              "producer_doorbell_count", "consumer_position", "consumer_cached_producer",
              "consumer_sleeping", "consumer_sleep_count", "producer_seen_consumer",
              "producer_seen_consumer_ns"):
    _h.field(_name, fmt=np.int64, align=FIELD_STRIDE_BYTES)
RING_HEADER = _h.build(align=FIELD_STRIDE_BYTES)
del _h, _name

MAGIC_OFFSET = RING_HEADER.offset("magic")
LAYOUT_VERSION_OFFSET = RING_HEADER.offset("layout_version")
CAPACITY_OFFSET = RING_HEADER.offset("capacity")
SLOT_SIZE_OFFSET = RING_HEADER.offset("slot_size")
SLOT_DTYPE_HASH_OFFSET = RING_HEADER.offset("slot_dtype_hash")
PRODUCER_POSITION_OFFSET = RING_HEADER.offset("producer_position")
PRODUCER_CACHED_CONSUMER_OFFSET = RING_HEADER.offset("producer_cached_consumer")
PRODUCER_FULL_COUNT_OFFSET = RING_HEADER.offset("producer_full_count")
PRODUCER_DOORBELL_COUNT_OFFSET = RING_HEADER.offset("producer_doorbell_count")
CONSUMER_POSITION_OFFSET = RING_HEADER.offset("consumer_position")
CONSUMER_CACHED_PRODUCER_OFFSET = RING_HEADER.offset("consumer_cached_producer")
CONSUMER_SLEEPING_OFFSET = RING_HEADER.offset("consumer_sleeping")
CONSUMER_SLEEP_COUNT_OFFSET = RING_HEADER.offset("consumer_sleep_count")
PRODUCER_SEEN_CONSUMER_OFFSET = RING_HEADER.offset("producer_seen_consumer")
PRODUCER_SEEN_CONSUMER_NS_OFFSET = RING_HEADER.offset("producer_seen_consumer_ns")
HEADER_BYTES = RING_HEADER.size
SLOTS_OFFSET = HEADER_BYTES
HEADER_WORDS = RING_HEADER.words

# word indexes: the ring code addresses the header as an int64 array (plain ints, which
# Numba compiles in as literals)
MAGIC_WORD = RING_HEADER.word("magic")
LAYOUT_VERSION_WORD = RING_HEADER.word("layout_version")
CAPACITY_WORD = RING_HEADER.word("capacity")
SLOT_SIZE_WORD = RING_HEADER.word("slot_size")
SLOT_DTYPE_HASH_WORD = RING_HEADER.word("slot_dtype_hash")
PRODUCER_POSITION_WORD = RING_HEADER.word("producer_position")
PRODUCER_CACHED_CONSUMER_WORD = RING_HEADER.word("producer_cached_consumer")
PRODUCER_FULL_COUNT_WORD = RING_HEADER.word("producer_full_count")
PRODUCER_DOORBELL_COUNT_WORD = RING_HEADER.word("producer_doorbell_count")
CONSUMER_POSITION_WORD = RING_HEADER.word("consumer_position")
CONSUMER_CACHED_PRODUCER_WORD = RING_HEADER.word("consumer_cached_producer")
CONSUMER_SLEEPING_WORD = RING_HEADER.word("consumer_sleeping")
CONSUMER_SLEEP_COUNT_WORD = RING_HEADER.word("consumer_sleep_count")
PRODUCER_SEEN_CONSUMER_WORD = RING_HEADER.word("producer_seen_consumer")
PRODUCER_SEEN_CONSUMER_NS_WORD = RING_HEADER.word("producer_seen_consumer_ns")

MAX_CAPACITY = 1 << 24

def check_capacity(capacity: object) -> int:
    """Return ``capacity`` if it is a power of two in [2, MAX_CAPACITY], else raise LayoutError."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
        raise LayoutError(f"capacity={capacity!r}: must be an integer")
    c = int(capacity)
    if c < 2 or c > MAX_CAPACITY or c & (c - 1):
        raise LayoutError(f"capacity={c}: must be a power of two in [2, {MAX_CAPACITY}]")
    return c


def check_slot_dtype(slot_dtype: object) -> np.dtype:
    """Return the dtype if its itemsize is a positive multiple of SLOT_ALIGN_BYTES, else raise."""
    dt = np.dtype(slot_dtype)
    if dt.itemsize == 0 or dt.itemsize % SLOT_ALIGN_BYTES:
        raise LayoutError(f"slot_dtype.itemsize={dt.itemsize}: must be a positive multiple of "
                          f"{SLOT_ALIGN_BYTES} (pad the dtype, e.g. shm.types.request_slot_dtype)")
    if dt.hasobject:
        raise LayoutError(f"slot_dtype={dt}: must not hold Python objects")
    return dt


def slot_dtype_hash(slot_dtype: np.dtype) -> int:
    """63-bit hash of the dtype's names, formats, offsets and itemsize (stable across runs)."""
    dt = np.dtype(slot_dtype)
    text = f"{dt.descr!r}|{dt.itemsize}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def segment_bytes(capacity: int, slot_size: int) -> int:
    """Total bytes of a ring segment: header plus ``capacity`` slots."""
    return SLOTS_OFFSET + capacity * slot_size


def slot_index_mask(capacity: int) -> int:
    """``index = position & mask``."""
    return capacity - 1
