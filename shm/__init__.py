"""Shared memory: rings between the ingress and the workers (x86-64 only). See docs/SHM.md.

atomics (LLVM atomics for njit code) -> layout (the only place with offsets) -> segment
(named POSIX segments, reclaim) -> ring (OneToOneRing) with doorbell and idle strategies.
"""

from shm.jitcache import invalidate_stale as _invalidate_stale

_invalidate_stale()     # before any cached function loads: a changed source recompiles its callers
