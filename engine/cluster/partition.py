"""Which partition an event belongs to: the workers' shard-key hash (ingress.admission.shard_of:
``((key * 0x9E3779B97F4A7C15) mod 2**64 >> 32)``) mod the partition count. One function for
both, so the partition of an event and its worker inside the owner come from the same hash.

The worker inside the owner is that hash mod the worker count: when the worker count divides
the partition count, every event of one partition goes to one worker (partition p to worker
p mod W), so a node's load spreads over its workers only as far as its partitions' residues
do (docs/CLUSTER.md, "Partitions")."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ingress.admission import shard_of


def partition_of_keys(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition index per shard key (vectorised; signed keys as their 64-bit pattern)."""
    return shard_of(np.asarray(keys), partitions)


def partition_of(event: Mapping, shard_key: str, partitions: int) -> int:
    """The partition of one event given as a mapping (JSON-shaped), by its ``shard_key`` field."""
    key = int(event[shard_key])
    if not -(1 << 63) <= key < 1 << 64:
        raise ValueError(f"{shard_key}={key}: not a 64-bit integer")
    return int(partition_of_keys(np.array([key & ((1 << 64) - 1)], dtype=np.uint64), partitions)[0])
