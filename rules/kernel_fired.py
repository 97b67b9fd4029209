"""Numba bookkeeping shared by every generated rule kernel, after the rules of one event
ran: rule hits and errors counted from the bitmap words, the decision's score and action,
and the fired list (the most important ``max_fired`` when more fired). The expression
helpers the rules themselves call are in rules.kernel_helpers."""
from __future__ import annotations

import numpy as np
from llvmlite import ir as llir
from numba import njit, types
from numba.extending import intrinsic

from rules.kernel_helpers import _OPTS


@intrinsic
def _ctz(typingctx, x):
    """Count of trailing zero bits of a non-zero uint64 (llvm.cttz)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], llir.Constant(llir.IntType(1), 1))
    return types.uint64(types.uint64), codegen


@njit(**_OPTS)
def _count_errors(errors, word, base):
    """errors[base + b] += 1 for each set bit b of ``word`` (uint64)."""
    m = word
    while m != np.uint64(0):
        errors[base + np.int64(_ctz(m))] += 1
        m &= m - np.uint64(1)


@njit(**_OPTS)
def _finish_word(o, word, base, hits, scores, actions, score, action, nf, max_fired):
    """Account the fired rules of one bitmap word in ascending index order.

    hits[k] += 1, the first ``max_fired`` indexes go to o.fired, score adds scores[k] and
    action takes the max of actions[k] (both 0 for shadow rules). Returns the running
    (score, action, nf).
    """
    m = word
    while m != np.uint64(0):
        k = base + np.int64(_ctz(m))
        m &= m - np.uint64(1)
        hits[k] += 1
        if nf < max_fired:
            o.fired[nf] = k
        nf += 1
        score += scores[k]
        if actions[k] > action:
            action = actions[k]
    return score, action, nf


@njit(**_OPTS)
def _select_fired(o, row, prio, max_fired):
    """More than ``max_fired`` rules fired: o.fired gets the ``max_fired`` that matter most,
    ascending. ``prio`` lists every rule index by importance (enforce rules by action, most
    severe first, then score, highest first; shadow rules last), so the rules that set the
    action are never the ones left out. Runs only on overflow."""
    k = 0
    for j in range(prio.shape[0]):
        r = prio[j]
        if row[r >> 6] >> np.uint64(r & 63) & np.uint64(1):
            o.fired[k] = r
            k += 1
            if k == max_fired:
                break
    for a in range(1, k):                # insertion sort of at most max_fired indexes
        v = o.fired[a]
        b = a - 1
        while b >= 0 and o.fired[b] > v:
            o.fired[b + 1] = o.fired[b]
            b -= 1
        o.fired[b + 1] = v


@njit(**_OPTS)
def any_above(a, n, limit):
    """True if one of ``a[:n]`` exceeds ``limit`` (the worker: did a decision overflow?)."""
    for i in range(n):
        if a[i] > limit:
            return True
    return False


@njit(**_OPTS)
def any_masked(bits, nfired, mask, n):
    """True if a decided one of the first ``n`` rows (nfired > 0) has a fired bit in ``mask``
    (the worker: did an enforce rule with block_source fire?)."""
    for i in range(n):
        if nfired[i] > 0:
            for w in range(mask.shape[0]):
                if bits[i, w] & mask[w]:
                    return True
    return False
