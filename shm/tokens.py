"""The request token: the u64 word 0 of a request slot, echoed in the response slot and its
fired-list slots. Opaque to the worker; the ingress (both of its paths) packs and unpacks
it here, and only here::

    bit  63     62 ......................................... 16  15 ............ 0
       +------+-----------------------------------------------+-----------------+
       | FAST | request sequence (SEQ_BITS = 47)               | index (16 bits) |
       +------+-----------------------------------------------+-----------------+
                 = ingress epoch (7 bits) << EPOCH_SHIFT + counter (40 bits)

FAST 0 (general path, ingress.generalpath): index = the event's place in its request.
FAST 1 (fast path, ingress.fastpath): index = the request's row in the in-flight table.
The epoch is the ingress's restart count mod EPOCHS, so a restarted ingress never takes a
predecessor's response for one of its own requests; the sequence never reaches bit 63.

A general-path request's tokens are ``(seq << INDEX_BITS) + index``: the ingress passes the
first one (index 0) to the staging kernel, which adds the index. Kernels unpack with the
inline functions below (Numba compiles the constants in as literals); Python code uses the
same constants with plain int arithmetic (a call per token would cost more than the shift).
"""
from __future__ import annotations

import numpy as np
from numba import njit

INDEX_BITS = 16
INDEX_SPAN = 1 << INDEX_BITS            # at most this many events per general-path request
INDEX_MASK = INDEX_SPAN - 1             # (ingress.max_batch) and rows in the fast path's table
EPOCH_SHIFT = 40                        # request sequence = (ingress epoch << 40) + counter
EPOCH_BITS = 7
EPOCHS = 1 << EPOCH_BITS
SEQ_BITS = EPOCH_SHIFT + EPOCH_BITS     # 47
SEQ_MASK = (1 << SEQ_BITS) - 1
FAST_SHIFT = INDEX_BITS + SEQ_BITS      # 63
FAST_BIT = 1 << FAST_SHIFT

_FAST = np.uint64(FAST_BIT)


def first_sequence(epoch: int) -> int:
    """The first request sequence of an ingress in ``epoch`` (0 is never a sequence)."""
    return (epoch % EPOCHS << EPOCH_SHIFT) + 1


@njit(cache=True, inline="always")
def fast_token(seq, row):
    """Token of the fast-path request ``seq`` in row ``row`` of the in-flight table."""
    return _FAST | (np.uint64(seq) << np.uint64(INDEX_BITS)) | np.uint64(row)


@njit(cache=True, inline="always")
def is_fast(token):
    return token & _FAST


@njit(cache=True, inline="always")
def token_seq(token):
    """The request sequence (either path)."""
    return np.int64((token >> np.uint64(INDEX_BITS)) & np.uint64(SEQ_MASK))


@njit(cache=True, inline="always")
def general_seq(token):
    """The request sequence of a general-path token (FAST clear: no mask needed)."""
    return np.int64(token >> np.uint64(INDEX_BITS))


@njit(cache=True, inline="always")
def token_index(token):
    """The event index (general path) or table row (fast path)."""
    return np.int64(token & np.uint64(INDEX_MASK))
