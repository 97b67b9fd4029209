"""CPU atomics for Numba code over shared memory (x86-64 only).

Why this module exists: a spin loop in ``@njit`` code that re-reads
an array element written by another process never sees the store, because LLVM hoists the
plain load out of the loop (numba issue 1351). Numba has no CPU atomics (numba issue 2988), so
these intrinsics emit LLVM's atomic instructions directly:

======================  ===================================  ================================
intrinsic               LLVM                                 x86-64 code
======================  ===================================  ================================
load_acquire(a, i)      ``load atomic acquire, align 8``     plain ``mov`` (compiler barrier)
store_release(a, i, v)  ``store atomic release, align 8``    plain ``mov`` (compiler barrier)
fence_seq_cst()         ``fence seq_cst``                    ``mfence`` (or a locked op)
fetch_add(a, i, v)      ``atomicrmw add seq_cst``            ``lock xadd``
compare_and_swap(...)   ``cmpxchg seq_cst seq_cst``          ``lock cmpxchg``
======================  ===================================  ================================

``a`` is a 1-D integer array (int64/uint64 for the ring positions; any integer width works,
e.g. int32 lock words), ``i`` an integer element index (no bounds check, no negative
wrap-around inside compiled code: the caller owns the index), and the element must be
naturally aligned (every numpy array over an mmap'd segment at a matching offset is).

Two hints for spin and batch loops come with them: ``pause()`` (x86 PAUSE, for the few
iterations a spin is allowed) and ``prefetch(a, i)`` (write prefetch of the element's line). The memory model is LLVM's, but the design built on it (shm.ring) is only claimed
for x86-64 (TSO): that is the only machine it is tested on.

The ``*_py`` functions are tiny ``@njit`` wrappers with bounds checks, callable from Python
(about 0.2-0.4 us of dispatch each); compiled code should call the intrinsics directly.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _word_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(arr.dtype, types.Integer)


def _align(aryty) -> int:
    return aryty.dtype.bitwidth // 8


def _element_pointer(context, builder, aryty, ary_val, idxty, idx_val):
    ary = context.make_array(aryty)(context, builder, value=ary_val)
    idx = context.cast(builder, idx_val, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)


@intrinsic
def load_acquire(typingctx, arr, idx):
    """Atomic load of ``arr[idx]`` with acquire ordering: later loads/stores stay after it."""
    if not (_word_array(arr) and isinstance(idx, types.Integer)):
        return None
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        return builder.load_atomic(ptr, "acquire", _align(signature.args[0]))

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """Atomic store of ``val`` into ``arr[idx]`` with release ordering: earlier stores stay before it."""
    if not (_word_array(arr) and isinstance(idx, types.Integer) and isinstance(val, types.Integer)):
        return None
    sig = types.void(arr, idx, val)

    def codegen(context, builder, signature, args):
        aryty, idxty, valty = signature.args
        ptr = _element_pointer(context, builder, aryty, args[0], idxty, args[1])
        v = context.cast(builder, args[2], valty, aryty.dtype)
        builder.store_atomic(v, ptr, "release", _align(aryty))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fence_seq_cst(typingctx):
    """Full fence: no load or store moves across it in either direction (x86: orders store->load)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """Atomically ``arr[idx] += val`` (seq_cst, wraps on overflow); returns the previous value."""
    if not (_word_array(arr) and isinstance(idx, types.Integer) and isinstance(val, types.Integer)):
        return None
    sig = arr.dtype(arr, idx, val)

    def codegen(context, builder, signature, args):
        aryty, idxty, valty = signature.args
        ptr = _element_pointer(context, builder, aryty, args[0], idxty, args[1])
        v = context.cast(builder, args[2], valty, aryty.dtype)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return sig, codegen


@intrinsic
def compare_and_swap(typingctx, arr, idx, expected, new):
    """Atomically: if ``arr[idx] == expected`` store ``new``. Returns the value seen (seq_cst).

    The swap happened iff the returned value equals ``expected``.
    """
    if not (_word_array(arr) and isinstance(idx, types.Integer)
            and isinstance(expected, types.Integer) and isinstance(new, types.Integer)):
        return None
    sig = arr.dtype(arr, idx, expected, new)

    def codegen(context, builder, signature, args):
        aryty, idxty, expty, newty = signature.args
        ptr = _element_pointer(context, builder, aryty, args[0], idxty, args[1])
        exp = context.cast(builder, args[2], expty, aryty.dtype)
        nv = context.cast(builder, args[3], newty, aryty.dtype)
        pair = builder.cmpxchg(ptr, exp, nv, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return sig, codegen


@intrinsic
def pause(typingctx):
    """x86 PAUSE: tells the core this is a spin-wait iteration (saves power, yields to the
    sibling hyper-thread). Not a fence."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, idx):
    """Prefetch the cache line of ``arr[idx]`` for writing (a hint: never faults)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(idx, types.Integer)):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        # rw=1 (will write), locality=3 (keep in all levels), 1 = data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


# --- Python-callable wrappers (bounds-checked) ---------------------------------------------

@njit(cache=True)
def _check(arr, idx):
    if idx < 0 or idx >= arr.size:
        raise IndexError("atomic index out of range")


@njit(cache=True)
def load_acquire_py(arr, idx):
    """``load_acquire`` from Python; raises IndexError outside ``0 <= idx < arr.size``."""
    _check(arr, idx)
    return load_acquire(arr, idx)


@njit(cache=True)
def store_release_py(arr, idx, val):
    """``store_release`` from Python; raises IndexError outside ``0 <= idx < arr.size``."""
    _check(arr, idx)
    store_release(arr, idx, val)


@njit(cache=True)
def fence_seq_cst_py():
    """``fence_seq_cst`` from Python."""
    fence_seq_cst()


@njit(cache=True)
def fetch_add_py(arr, idx, val):
    """``fetch_add`` from Python; returns the previous value."""
    _check(arr, idx)
    return fetch_add(arr, idx, val)


@njit(cache=True)
def compare_and_swap_py(arr, idx, expected, new):
    """``compare_and_swap`` from Python; returns the value seen (swapped iff == expected)."""
    _check(arr, idx)
    return compare_and_swap(arr, idx, expected, new)
