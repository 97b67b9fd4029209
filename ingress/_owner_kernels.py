"""Compiled routing of one event record for the compiled loop (ingress._loop_kernels): its
shard-key hash (ingress.admission.shard_of before the reduction: the worker is the hash mod
the worker count, the partition the hash mod the partition count) and, on a cluster node,
whether this node holds a valid lease on its partition (ingress.ownercheck; the deadlines are
shm.ownership's ``until_ns``, judged against CLOCK_BOOTTIME read here)."""
from __future__ import annotations

import numpy as np
from numba import njit

from ingress import zmqc
from ingress._fast_kernels import _get

HASH_MUL = np.uint64(0x9E3779B97F4A7C15)      # admission.shard_of's multiplier
CLOCK_BOOTTIME = 7                            # Linux: the lease clock (shm.ownership.now_ns)


@njit(cache=True, inline="always")
def shard_hash(buf, off, width, signed):
    """The hash of the integer shard key of ``width`` bytes at ``buf[off:]``."""
    key = _get(buf, off, width)
    if signed and width < 8 and key >> np.uint64(8 * width - 1):
        key |= ~((np.uint64(1) << np.uint64(8 * width)) - np.uint64(1))   # sign-extend
    return (key * HASH_MUL) >> np.uint64(32)


@njit(cache=True, inline="always")
def owned(until_ns, h, ts):
    """Does this node hold a valid lease on the partition of hash ``h`` now? ``until_ns``:
    one deadline per partition; ``ts``: two int64 scratch cells."""
    zmqc.clock_gettime(CLOCK_BOOTTIME, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1] < until_ns[np.int64(h % np.uint64(until_ns.shape[0]))]
