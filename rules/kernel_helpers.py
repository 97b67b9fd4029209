"""Numba helpers called by generated rule kernels; each mirrors rules.reference exactly.

Helpers that can fail return ``(value, failed)``; a failed value is a harmless stand-in
(the rule is then counted as an evaluation error and its result ignored), so no helper
ever raises inside a kernel and no integer division can trap (x86 ``idiv`` faults on
INT64_MIN // -1 and on division by zero: both are checked before dividing).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir as llir
from numba import njit, types
from numba.extending import intrinsic

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_INL = dict(_OPTS, inline="always")   # small helpers: inlined into the generated chunks
I64_MIN = np.int64(-(1 << 63))
I64_MAX = np.int64((1 << 63) - 1)
_TWO63 = 9.223372036854775808e18
_TWO64 = 1.8446744073709552e19
_TWO53 = np.uint64(1 << 53)
_TWO54 = np.uint64(1 << 54)


@intrinsic
def _ldb(typingctx, rec, offset, nbytes):
    """uint64 of ``nbytes`` (1..8, a literal) bytes at ``offset`` of a record, little-endian,
    zero-extended. Used to compare bytesN fields with literals as integers."""
    if not isinstance(rec, types.Record) or not isinstance(nbytes, types.IntegerLiteral):
        return None
    nb = nbytes.literal_value
    if not 1 <= nb <= 8:
        return None

    def codegen(context, builder, signature, args):
        p8 = builder.bitcast(args[0], llir.IntType(8).as_pointer())
        p = builder.gep(p8, [args[1]])
        v = builder.load(builder.bitcast(p, llir.IntType(8 * nb).as_pointer()), align=1)
        return v if nb == 8 else builder.zext(v, llir.IntType(64))
    return types.uint64(rec, offset, nbytes), codegen


@intrinsic
def _f64_bits(typingctx, x):
    """The 64 bits of a float64 as uint64 (a column row of the column pass, no conversion)."""
    if not isinstance(x, types.Float) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llir.IntType(64))
    return types.uint64(x), codegen


@intrinsic
def _bits_f64(typingctx, u):
    """The float64 whose 64 bits are ``u`` (the inverse of _f64_bits)."""
    if not isinstance(u, types.Integer) or u.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llir.DoubleType())
    return types.float64(u), codegen


@intrinsic
def _fmod(typingctx, a, b):
    """np.fmod(a, b) (frem) of ``a`` passed through an empty asm with a side effect, so LLVM
    cannot hoist the libm call out of a short-circuit: a bare frem ran for every event."""
    if not (a == types.float64 and b == types.float64):
        return None

    def codegen(context, builder, signature, args):   # "=x,0": in and out in one SSE register
        x = builder.asm(llir.FunctionType(d := args[0].type, [d]), "", "=x,0", [args[0]], side_effect=True)
        return builder.frem(x, args[1])
    return types.float64(a, b), codegen


# --- int64 arithmetic with overflow detection (unsigned wraparound is well defined) ----
@njit(**_INL)
def _add_ii(a, b):
    r = np.int64(np.uint64(a) + np.uint64(b))
    return r, ((a ^ r) & (b ^ r)) < 0


@njit(**_INL)
def _sub_ii(a, b):
    r = np.int64(np.uint64(a) - np.uint64(b))
    return r, ((a ^ b) & (a ^ r)) < 0


@njit(**_OPTS)
def _mul_ii(a, b):
    if a == 0 or b == 0:
        return np.int64(0), False
    if b == -1:
        return np.int64(np.uint64(0) - np.uint64(a)), a == I64_MIN
    if a == -1:
        return np.int64(np.uint64(0) - np.uint64(b)), b == I64_MIN
    r = np.int64(np.uint64(a) * np.uint64(b))
    return r, r // b != a or (r % b) != 0


@njit(**_INL)
def _floordiv_ii(a, b):
    if b == 0:
        return np.int64(0), True
    if b == -1:
        return np.int64(np.uint64(0) - np.uint64(a)), a == I64_MIN
    return a // b, False


@njit(**_INL)
def _mod_ii(a, b):
    if b == 0:
        return np.int64(0), True
    if b == -1:
        return np.int64(0), False
    return a % b, False


@njit(**_OPTS)
def _pow_ii(a, b):
    if b < 0:
        return np.int64(0), True
    if a == 0:
        return np.int64(1 if b == 0 else 0), False
    if a == 1:
        return np.int64(1), False
    if a == -1:
        return np.int64(1 if b % 2 == 0 else -1), False
    if b > 64:
        return np.int64(0), True
    r = np.int64(1)
    base = a
    e = b
    while True:
        if e & 1:
            r, f = _mul_ii(r, base)
            if f:
                return np.int64(0), True
        e >>= 1
        if e == 0:
            return r, False
        base, f = _mul_ii(base, base)
        if f:
            return np.int64(0), True


@njit(**_INL)
def _neg_i(a):
    return np.int64(np.uint64(0) - np.uint64(a)), a == I64_MIN


@njit(**_INL)
def _abs_i(a):
    if a < 0:
        return np.int64(np.uint64(0) - np.uint64(a)), a == I64_MIN
    return a, False


@njit(**_INL)
def _u64_to_i(u):
    return np.int64(u), u > np.uint64(I64_MAX)


@njit(**_OPTS)
def _uabs(a):
    """|a| as uint64 (exact for INT64_MIN)."""
    return np.uint64(0) - np.uint64(a) if a < 0 else np.uint64(a)


@njit(**_OPTS)
def _truediv_ii(a, b):
    """a / b correctly rounded, like Python's int true division."""
    if b == 0:
        return 0.0, True
    ua = _uabs(a)
    ub = _uabs(b)
    neg = (a < 0) != (b < 0)
    if ua <= _TWO53 and ub <= _TWO53:
        return np.float64(a) / np.float64(b), False
    q = ua // ub
    r = ua - q * ub
    k = 0
    while q < _TWO54 and r != 0:
        r <<= np.uint64(1)
        q <<= np.uint64(1)
        if r >= ub:
            r -= ub
            q |= np.uint64(1)
        k += 1
    if r != 0:
        q |= np.uint64(1)        # sticky bit, below the rounding position (q >= 2**54)
    x = math.ldexp(np.float64(q), -k)
    return (-x if neg else x), False


# --- float64 operations with Python's error cases --------------------------------------
@njit(**_INL)
def _div_ff(a, b):
    if b == 0.0:
        return 0.0, True
    return a / b, False


@njit(**_OPTS)
def _mod_ff(a, b):
    """Python's float %: the sign of the divisor (CPython float_rem)."""
    if b == 0.0:
        return 0.0, True
    m = _fmod(a, b)
    if m != 0.0:
        if (b < 0.0) != (m < 0.0):
            m += b
    else:
        m = math.copysign(0.0, b)
    return m, False


@njit(**_OPTS)
def _floordiv_ff(a, b):
    """Python's float // (CPython _float_div_mod)."""
    if b == 0.0:
        return 0.0, True
    m = _fmod(a, b)
    d = (a - m) / b
    if m != 0.0:
        if (b < 0.0) != (m < 0.0):
            d -= 1.0
    if d != 0.0:
        fd = np.floor(d)
        if d - fd > 0.5:
            fd += 1.0
    else:
        fd = math.copysign(0.0, a / b)
    return fd, False


@njit(**_OPTS)
def _odd(x):
    return np.fmod(abs(x), 2.0) == 1.0


@njit(**_OPTS)
def _pow_ff(a, b):
    """Python's float ** (CPython float_pow), errors where Python raises."""
    if b == 0.0:
        return 1.0, False
    if math.isnan(a):
        return a, False
    if math.isnan(b):
        return (1.0 if a == 1.0 else b), False
    if math.isinf(b):
        aa = abs(a)
        if aa == 1.0:
            return 1.0, False
        if (b > 0.0) == (aa > 1.0):
            return abs(b), False
        return 0.0, False
    if math.isinf(a):
        if b > 0.0:
            return (a if _odd(b) else abs(a)), False
        return (math.copysign(0.0, a) if _odd(b) else 0.0), False
    if a == 0.0:
        if b < 0.0:
            return 0.0, True
        return (a if _odd(b) else 0.0), False
    if a < 0.0 and b != np.floor(b):
        return 0.0, True
    r = a ** b
    return r, math.isinf(r)


@njit(**_OPTS)
def _round_f(x):
    """Python's round(float) -> int (half to even); nan/inf/out of int64 fail."""
    if not math.isfinite(x):
        return np.int64(0), True
    r = np.rint(x)
    if r >= _TWO63 or r < -_TWO63:
        return np.int64(0), True
    return np.int64(r), False


# --- exact mixed comparisons: -1 less, 0 equal, 1 greater, 2 unordered (nan) -------------
@njit(**_INL)
def _cmp_if(i, f):
    if f != f:
        return 2
    if f >= _TWO63:
        return -1
    if f < -_TWO63:
        return 1
    fl = np.floor(f)
    fi = np.int64(fl)
    if i < fi:
        return -1
    if i > fi:
        return 1
    return -1 if f > fl else 0


@njit(**_OPTS)
def _cmp_uf(u, f):
    if u <= np.uint64(I64_MAX):
        return _cmp_if(np.int64(u), f)
    if f != f:
        return 2
    if f >= _TWO64:
        return -1
    if f < _TWO63:
        return 1
    fu = np.uint64(f)
    return -1 if u < fu else (1 if u > fu else 0)


@njit(**_INL)
def _cmp_ui(u, i):
    if i < 0 or u > np.uint64(I64_MAX):
        return 1
    si = np.int64(u)
    return -1 if si < i else (1 if si > i else 0)


# --- 'wide' integers: a tuple (int64 v, bool big); the value is uint64(v) when big -------
# (if-else, and/or, min/max, abs between a u64 and a signed int: exact, no arithmetic)
@njit(**_INL)
def _w_i(i):
    return (np.int64(i), False)


@njit(**_INL)
def _w_u(u):
    return (np.int64(u), u > np.uint64(I64_MAX))


@njit(**_INL)
def _w_to_i(w):
    return w[0], w[1]


@njit(**_INL)
def _w_to_f(w):
    return np.float64(np.uint64(w[0])) if w[1] else np.float64(w[0])


@njit(**_INL)
def _abs_w(w):
    """|w| (never fails: |INT64_MIN| = 2**63 is big)."""
    if w[1] or w[0] >= 0:
        return w
    return (np.int64(np.uint64(0) - np.uint64(w[0])), w[0] == I64_MIN)


@njit(**_INL)
def _cmp_wi(w, i):
    if w[1]:
        return 1
    return -1 if w[0] < i else (1 if w[0] > i else 0)


@njit(**_INL)
def _cmp_wu(w, u):
    if w[1]:
        a = np.uint64(w[0])
        return -1 if a < u else (1 if a > u else 0)
    return -_cmp_ui(u, w[0])


@njit(**_INL)
def _cmp_wf(w, f):
    return _cmp_uf(np.uint64(w[0]), f) if w[1] else _cmp_if(w[0], f)


@njit(**_INL)
def _cmp_ww(a, b):
    if a[1] != b[1]:
        return 1 if a[1] else -1
    if a[1]:
        return _cmp_wu(a, np.uint64(b[0]))
    return -1 if a[0] < b[0] else (1 if a[0] > b[0] else 0)


@njit(**_OPTS)
def _in_sorted_i(x, arr):
    """x in a sorted int64 or uint64 array (binary search; Numba specialises per dtype)."""
    lo = 0
    hi = arr.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < arr.shape[0] and arr[lo] == x


_in_sorted_u = _in_sorted_i        # the name generated code uses for uint64 sets
