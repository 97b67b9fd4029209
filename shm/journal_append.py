"""The journal writer's compiled append: copy a batch into the mapped segment, number it and
seal it (the check word, shm.journal_format) in one call per batch.

The check is a chain of dependent multiplies over a record's words, about 6 cycles a word
on one record. Sealing ``LANES`` records side by side keeps that many independent chains in
flight, so the multiplier, not the chain's latency, sets the pace: the same hash, the same
bytes, sealed about twice as fast (``python -m bench.journal``). Records go in groups of
``LANES``: each group is copied (seq and check left as they were, zero in a segment past the
append position), then numbered and sealed. A process killed in the middle of a batch thus
leaves sealed records and at most ``LANES`` unsealed ones at the append position: their seq
(0) and check fail, a torn tail for the reader (docs/DURABILITY.md).

Records are rows of u64 words: seq is word 0, check the last word (journal_format.journal_layout).
"""
from __future__ import annotations

import numpy as np
from numba import carray, njit, typeof, types
from numba.extending import intrinsic

from shm.descriptor import WORD_BYTES
from shm.journal_format import _K0, _finish, _mix, _record_hash
from shm.journal_format import warm_up as _warm_up_reader
from shm.types import DECISION, RESPONSE_SLOT

LANES = 8                    # records sealed side by side (the unrolled body of _seal)

# a response slot's DECISION word 1 (generation u32, action u8, flags u8) without what
# follows it there (nfired): the record's bytes after DECISION are padding, stored as zeros
_TAIL_MASK = np.uint64((1 << 8 * (DECISION.size - WORD_BYTES)) - 1)
_RESP_SCORE_WORD = RESPONSE_SLOT.word("score")     # DECISION's first word in a response slot


def field_mask(dtype: np.dtype) -> np.ndarray:
    """u64 words over ``dtype``'s bytes: all ones on the bytes of its fields, zero on its
    padding (a record stores zeros there, whatever the bytes it was copied from held)."""
    m = np.zeros(dtype.itemsize, np.uint8)
    for name in dtype.names:
        sub, off = dtype.fields[name][:2]
        m[off:off + sub.itemsize] = 0xFF
    return m.view(np.uint64)


@njit(cache=True, inline="always")
def _seal(words, r, g, first_seq):
    """Number rows r..r+g-1 first_seq.. and store their checks. seq is stored before the
    hash is taken: the hash covers it. A full group (g == LANES) hashes its rows side by
    side, one word of each row per round; a shorter one row by row."""
    w = words.shape[1]
    s = np.uint64(first_seq)
    if g < LANES:
        for j in range(g):
            words[r + j, 0] = s + np.uint64(j)
            words[r + j, w - 1] = _record_hash(words[r + j])
        return
    for j in range(LANES):
        words[r + j, 0] = s + np.uint64(j)
    h = _K0 * np.uint64(w)
    h0, h1, h2, h3 = _mix(h, s), _mix(h, s + np.uint64(1)), _mix(h, s + np.uint64(2)), _mix(h, s + np.uint64(3))
    h4, h5, h6, h7 = _mix(h, s + np.uint64(4)), _mix(h, s + np.uint64(5)), _mix(h, s + np.uint64(6)), _mix(h, s + np.uint64(7))
    for k in range(1, w - 1):
        h0, h1 = _mix(h0, words[r, k]), _mix(h1, words[r + 1, k])
        h2, h3 = _mix(h2, words[r + 2, k]), _mix(h3, words[r + 3, k])
        h4, h5 = _mix(h4, words[r + 4, k]), _mix(h5, words[r + 5, k])
        h6, h7 = _mix(h6, words[r + 6, k]), _mix(h7, words[r + 7, k])
    words[r, w - 1], words[r + 1, w - 1] = _finish(h0), _finish(h1)
    words[r + 2, w - 1], words[r + 3, w - 1] = _finish(h2), _finish(h3)
    words[r + 4, w - 1], words[r + 5, w - 1] = _finish(h4), _finish(h5)
    words[r + 6, w - 1], words[r + 7, w - 1] = _finish(h6), _finish(h7)


@njit(cache=True)
def _append(words, pos, src, first_row, n, first_seq):
    """Copy src rows first_row.. (flat u64 words, as many per row as ``words``) into rows
    pos.. and seal them as first_seq.. (JournalWriter.append_batch). Words 0 and w-1 of the
    source (seq, check) are not read."""
    w = words.shape[1]
    for i in range(0, n, LANES):
        g = min(LANES, n - i)
        r = pos + i
        b = (first_row + i) * w
        for j in range(g):
            for k in range(1, w - 1):
                words[r + j, k] = src[b + j * w + k]
        _seal(words, r, g, first_seq + i)


@njit(cache=True)
def _append_slots(words, pos, req, req_w, mask, resp, first_row, n, first_seq):
    """Records straight from ring slots (JournalWriter.append_slots): request row i (flat u64
    words, ``req_w`` per row) holds (token, arrival_ns, client_id, request_id, event) and
    response row i (``resp``, 2-d u64) holds (token, score, generation|action|flags|nfired):
    arrival_ns, the ids and the event are record words 1..w-4 (``mask``: their field bytes,
    padding zeroed), DECISION is words w-3..w-2 (the response's, without nfired: the
    record's pad is zero). Then seq and check, as ``_append``. The words line up by
    construction (journal_layout)."""
    w = words.shape[1]
    for i in range(0, n, LANES):
        g = min(LANES, n - i)
        r = pos + i
        for j in range(g):
            q = first_row + i + j
            b = q * req_w
            for k in range(1, w - 3):
                words[r + j, k] = req[b + k] & mask[k - 1]
            words[r + j, w - 3] = resp[q, _RESP_SCORE_WORD]
            words[r + j, w - 2] = resp[q, _RESP_SCORE_WORD + 1] & _TAIL_MASK
        _seal(words, r, g, first_seq + i)


# --- one call per batch: the writer's position lives in an int64 array the kernels advance ----
# JournalWriter._st: position in the segment (rows), the segment's first seq, the rows
# appended but not yet synced [dirty_lo, dirty_hi), records appended since open
ST_POS, ST_FIRST, ST_DIRTY_LO, ST_DIRTY_HI, ST_APPENDED = range(5)
ST_WORDS = 5


@njit(cache=True, inline="always")
def _advance(st, p, n):
    if st[ST_DIRTY_HI] <= st[ST_DIRTY_LO]:
        st[ST_DIRTY_LO] = p
    st[ST_DIRTY_HI] = p + n
    st[ST_POS] = p + n
    st[ST_APPENDED] += n


@njit(cache=True)
def _append_at(words, st, src, n):
    """``_append`` of ``n`` rows of ``src`` at the writer's position, which it advances.
    Returns the first seq written, or 0 when the rows do not fit in the segment (nothing
    written: the caller rotates)."""
    p = st[ST_POS]
    if p + n > words.shape[0]:
        return 0
    first = st[ST_FIRST] + p
    _append(words, p, src, 0, n, first)
    _advance(st, p, n)
    return first


@intrinsic
def _words_of(typingctx, ary):
    """(data pointer as a uint64 pointer, its address) of a C-contiguous array."""
    if not (isinstance(ary, types.Array) and ary.layout == "C"):
        return None
    ptr = types.CPointer(types.uint64)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return context.make_tuple(builder, signature.return_type, (
            builder.bitcast(data, context.get_value_type(ptr)),
            builder.ptrtoint(data, context.get_value_type(types.uintp))))
    return types.Tuple((ptr, types.uintp))(ary), codegen


@njit(cache=True)
def _append_records_at(words, st, records, n):
    """``_append_at`` of the first ``n`` rows of a C-contiguous record array whose rows are
    the segment's rows (journal dtype): its words read in place, without the numpy view.
    -1 when they are not 8-byte aligned (numpy calls a packed record array at any address
    aligned): nothing written, the caller takes the dispatched path."""
    ptr, addr = _words_of(records)
    if addr % 8 != 0:
        return -1
    return _append_at(words, st, carray(ptr, (n * words.shape[1],)), n)


def records_entry(words: np.ndarray, st: np.ndarray, dtype: np.dtype):
    """The compiled entry point of ``_append_records_at`` for ``words``, ``st`` and a
    C-contiguous 1-d array of ``dtype``, compiled (or loaded from the cache) here. It skips
    the numpy word view and Numba's per-call typing (together more than the append of 64
    records took): UNCHECKED, the caller passes exactly those types."""
    args = (words, np.zeros_like(st), np.zeros(0, dtype), 0)    # appends nothing
    _append_records_at(*args)
    return _append_records_at.overloads[tuple(typeof(a) for a in args)].entry_point


@njit(cache=True)
def _append_slots_at(words, st, req, req_w, mask, resp, n):
    """``_append_slots`` of ``n`` slot rows at the writer's position, as ``_append_at``."""
    p = st[ST_POS]
    if p + n > words.shape[0]:
        return 0
    first = st[ST_FIRST] + p
    _append_slots(words, p, req, req_w, mask, resp, 0, n, first)
    _advance(st, p, n)
    return first


def warm_up() -> None:
    """Compile (or load from the numba cache) every journal kernel signature, the reader's
    too (journal_format.warm_up); the writer calls it."""
    _warm_up_reader()
    w, st = np.zeros((1, 2), np.uint64), np.zeros(ST_WORDS, np.int64)
    _append(w, 0, w.reshape(-1), 0, 1, 1)
    _append_slots(np.zeros((1, 5), np.uint64), 0, w.reshape(-1), 2, w.reshape(-1), w, 0, 0, 1)
    _append_at(w, st, w.reshape(-1), 0)
    _append_slots_at(np.zeros((1, 5), np.uint64), st, w.reshape(-1), 2, w.reshape(-1), w, 0)
