"""The atomics the feature tables use, under the names the feature kernels call.

They are the shared intrinsics of shm/atomics.py (x86-64 only; see its docstring).
Orderings as used here:
  _load_acquire   acquire load: later loads/stores are not hoisted above it.
  _store_release  release store: earlier loads/stores are not sunk below it.
  _cas            seq_cst compare-and-swap, returns the value seen (== expected on success).
  _fetch_add      seq_cst atomic add, returns the previous value.
  _fence          seq_cst full fence (the one x86 reordering: store -> load).
  _pause          x86 PAUSE for a bounded spin.
  _prefetch       write prefetch of an element's cache line (a hint, never faults).
"""
from shm.atomics import compare_and_swap as _cas  # noqa: F401
from shm.atomics import fence_seq_cst as _fence  # noqa: F401
from shm.atomics import fetch_add as _fetch_add  # noqa: F401
from shm.atomics import load_acquire as _load_acquire  # noqa: F401
from shm.atomics import pause as _pause  # noqa: F401
from shm.atomics import prefetch as _prefetch  # noqa: F401
from shm.atomics import store_release as _store_release  # noqa: F401
