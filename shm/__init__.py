"""Shared memory: rings between the ingress and the workers (x86-64 only). See docs/SHM.md.

atomics (LLVM atomics for njit code) -> descriptor (the layout vocabulary) -> layout (the
ring's offsets) -> names -> segment (named POSIX segments, reclaim) -> ring (OneToOneRing)
with doorbell and idle strategies. Every structure in shared memory has one descriptor:
docs/ARCHITECTURE.md lists where.
"""

from shm.jitcache import invalidate_stale as _invalidate_stale

_invalidate_stale()     # before any cached function loads: a changed source recompiles its callers
