"""Per-kind slot layout: the one place that says how many words a slot has and where the
payload of each kind lives (the table header and slot head are in ``shm.features.table``).

Slot = key u64 | meta u64 | payload::

    count    nb x u32 counts                               16 + 4*nb   (60 buckets: 256 B)
    sum      nb x f64 sums                                 16 + 8*nb
    min/max  nb x f64 (empty bucket = +inf / -inf)         16 + 8*nb
    avg      nb x f64 sums, then nb x u32 counts           16 + 12*nb
    distinct nb x m u8 HyperLogLog registers, then m u8   16 + (nb+1)*m
             window registers (max of the buckets)
    age      i64 first-seen ms                             24
    last     f64 last value (meta recency = its time ms)   24
    state    u64 account state                             24

Sizes are rounded up to whole u64 words. Bucket b of a window payload holds epoch e with
e % nb == b, e in (head - nb, head], head = meta recency (epoch = t_ms // bucket_ms).
"""
from __future__ import annotations

KIND_CODES = {"count": 0, "sum": 1, "avg": 2, "min": 3, "max": 4, "distinct": 5,
              "age": 6, "last": 7, "state": 8}
WINDOW_KINDS = ("count", "sum", "avg", "min", "max")


def _words(nbytes: int) -> int:
    return (nbytes + 7) // 8


def payload_bytes(kind: str, nbuckets: int = 0, registers: int = 0) -> int:
    if kind == "count":
        return 4 * nbuckets
    if kind in ("sum", "min", "max"):
        return 8 * nbuckets
    if kind == "avg":
        return 8 * nbuckets + 4 * nbuckets
    if kind == "distinct":
        return (nbuckets + 1) * registers
    if kind in ("age", "last", "state"):
        return 8
    raise ValueError(f"kind={kind!r}: unknown")


def slot_words(kind: str, nbuckets: int = 0, registers: int = 0) -> int:
    """u64 words per slot: 2 (key, meta) + payload rounded up to words."""
    return 2 + _words(payload_bytes(kind, nbuckets, registers))


def slot_bytes(kind: str, nbuckets: int = 0, registers: int = 0) -> int:
    return 8 * slot_words(kind, nbuckets, registers)


def avg_count_word(nbuckets: int) -> int:
    """Payload word offset (from the slot's payload start) of the avg kind's u32 counts."""
    return nbuckets
