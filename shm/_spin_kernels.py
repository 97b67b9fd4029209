"""Compiled pieces of an idle wait: the clock, and a consumer's spin on its ring.

``spin`` is SpinThenSleep.idle's polling phase in one ``nogil`` call: acquire-load the
producer position until slots are readable or the deadline passes, yielding the CPU every
round (sched_yield: a runnable process on this CPU goes first). In Python a round cost
about 5.7 us, 2.4 of them the yield (docs/BENCH.md): a batch arriving during a round waited
for the rest of it, and the loop's way back to the drain. libc's clock_gettime and
sched_yield are called by name (registered with LLVM here).
"""
from __future__ import annotations

import ctypes

from llvmlite import binding as ll
from numba import njit, types

from shm._ring_kernels import _available

_LIBC = ctypes.CDLL(None)
for _name in ("clock_gettime", "sched_yield"):
    ll.add_symbol(_name, ctypes.cast(getattr(_LIBC, _name), ctypes.c_void_p).value)
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.uint64))
_sched_yield = types.ExternalFunction("sched_yield", types.int32())
CLOCK_MONOTONIC = 1          # time.monotonic_ns's and time.perf_counter_ns's clock (Linux)


@njit(cache=True, nogil=True, inline="always")
def monotonic_ns(ts, at):
    """CLOCK_MONOTONIC in ns; ``ts[at:at + 2]``: two int64 cells for the timespec."""
    _clock_gettime(CLOCK_MONOTONIC, ts.ctypes.data + at * 8)
    return ts[at] * 1_000_000_000 + ts[at + 1]


@njit(cache=True, nogil=True)
def spin(hdr, deadline_ns, yield_cpu, ts):
    """Readable slots of the ring with header ``hdr`` as soon as there are any, or 0 once
    CLOCK_MONOTONIC reaches ``deadline_ns`` (the ring is looked at once more after each
    yield, as SpinThenSleep's Python loop did). ``ts``: two int64 cells."""
    while True:
        n = _available(hdr)
        if n:
            return n
        if monotonic_ns(ts, 0) >= deadline_ns:
            return 0
        if yield_cpu:
            _sched_yield()
