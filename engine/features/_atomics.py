"""Minimal CPU atomics for njit code on shared-memory numpy arrays (x86-64 only).

Numba has no CPU atomics (numba issue 2988); these are LLVM atomic instructions emitted
through ``numba.extending.intrinsic``. Each takes ``(array, index, ...)`` and operates on
the element's address, so it works on any 1-D C-contiguous integer array, including views
of a POSIX shared-memory mapping shared by several processes.

Orderings (see /work/shared/ENGINEERING.md section 3):
  _load_acquire    acquire load: later loads/stores are not hoisted above it.
  _store_release   release store: earlier loads/stores are not sunk below it.
  _cas             seq_cst compare-and-swap, returns the value seen (== expected on success).
  _fetch_add       seq_cst atomic add, returns the previous value.
  _fence           seq_cst full fence (the one x86 reordering: store -> load).
  _pause           the x86 PAUSE hint for a spin loop.
  _prefetch        a read/write prefetch of the element's cache line (no fault on any address
                   inside the array; used to overlap the cache misses of a batch).

These are meant to be merged into shm/atomics.py once it lands; the signatures are kept
minimal so the swap is an import change.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _elem_ptr(context, builder, arrty, arr, idx, idxty):
    ary = context.make_array(arrty)(context, builder, arr)
    idx = context.cast(builder, idx, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx], wraparound=False)


def _check(arr, idx):
    return isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(arr.dtype, types.Integer) \
        and isinstance(idx, types.Integer)


@intrinsic
def _load_acquire(typingctx, arr, idx):
    if not _check(arr, idx):
        return None
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _elem_ptr(context, builder, arr, args[0], args[1], idx)
        return builder.load_atomic(ptr, "acquire", arr.dtype.bitwidth // 8)
    return sig, codegen


@intrinsic
def _store_release(typingctx, arr, idx, val):
    if not _check(arr, idx):
        return None
    sig = types.void(arr, idx, val)

    def codegen(context, builder, signature, args):
        ptr = _elem_ptr(context, builder, arr, args[0], args[1], idx)
        v = context.cast(builder, args[2], val, arr.dtype)
        builder.store_atomic(v, ptr, "release", arr.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _cas(typingctx, arr, idx, expected, new):
    if not _check(arr, idx):
        return None
    sig = arr.dtype(arr, idx, expected, new)

    def codegen(context, builder, signature, args):
        ptr = _elem_ptr(context, builder, arr, args[0], args[1], idx)
        e = context.cast(builder, args[2], expected, arr.dtype)
        n = context.cast(builder, args[3], new, arr.dtype)
        res = builder.cmpxchg(ptr, e, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 0)
    return sig, codegen


@intrinsic
def _fetch_add(typingctx, arr, idx, delta):
    if not _check(arr, idx):
        return None
    sig = arr.dtype(arr, idx, delta)

    def codegen(context, builder, signature, args):
        ptr = _elem_ptr(context, builder, arr, args[0], args[1], idx)
        d = context.cast(builder, args[2], delta, arr.dtype)
        return builder.atomic_rmw("add", ptr, d, "seq_cst")
    return sig, codegen


@intrinsic
def _fence(typingctx):
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _pause(typingctx):
    sig = types.void()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.VoidType(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _prefetch(typingctx, arr, idx):
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(idx, types.Integer)):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ptr = _elem_ptr(context, builder, arr, args[0], args[1], idx)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # rw=1 (we will write the line), locality=3 (keep in all cache levels), data cache.
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()
    return sig, codegen
