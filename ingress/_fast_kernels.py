"""Compiled parts of the ingress's single-event fast path (ingress.fastpath).

A binary request with one event is the latency-critical case (one order, one payment); the
general path spent about 25 us of Python per such request on bookkeeping (a pending object,
numpy views, a heap entry, several small numpy copies, three compiled calls). Here the
bookkeeping lives in preallocated arrays and two compiled calls do it: ``admit`` per request
(value checks, duplicate lookup, table slot, ring slot, publish) and ``deliver`` per drained
batch of responses (match, metrics, idempotency window, reply encoding, slot release).

Table ``ft`` (capacity x FT_WORDS int64), one row per request in flight; ``SEQ`` 0 = free.
Decisions ``fdec`` (capacity x 64 B, RESPONSE_SLOT_DTYPE bytes; generation 0 = none yet) and
encoded replies ``fout`` (capacity x REPLY_BYTES) are per row too. ``free`` is a stack of free
rows (low rows on top, so the rows in use stay below a small high-water mark); ``meta`` holds
its top, the rows in use, the earliest deadline (a lower bound: rows finished since then may
have held it, which costs one needless scan, never a late answer) and the high-water mark.

Token of a fast request in a ring slot (shm.tokens): FAST | seq | row. ``seq`` never repeats
within an ingress epoch and the epoch is part of it, so a stale response (its request already
answered by deadline, or sent by a predecessor ingress) never matches a row's SEQ.
All integer byte fields are little-endian; x86-64 only, like the rest of the engine.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.control import _observe_request
from shm.types import (MAX_FIRED, RESPONSE_SLOT_DTYPE, SLOT_ARRIVAL_OFFSET, SLOT_CLIENT_ID_OFFSET,
                       SLOT_REQUEST_ID_OFFSET, SLOT_TOKEN_OFFSET, DecisionFlag)
from ingress import wire
from ingress import _dedup_kernels as DK
from ingress._bytes_kernels import copy_bytes, zero_bytes
from shm import _ring_kernels as RK
from shm.atomics import load_acquire
from shm.layout import (CONSUMER_POSITION_WORD, PRODUCER_POSITION_WORD, PRODUCER_SEEN_CONSUMER_NS_WORD,
                        PRODUCER_SEEN_CONSUMER_WORD)
from shm.tokens import fast_token, is_fast, token_index, token_seq

# ft columns
SEQ, ARRIVAL, ROUTED, FIRST, DEADLINE, WORKER, CID, RID, KEYED, RHASH = range(10)
FT_WORDS = 10
# meta cells
TOP, USED, MIN_DEADLINE, HIGH = 0, 1, 2, 3        # HIGH: rows below it were ever used
META_WORDS = 4
NO_DEADLINE = np.int64((1 << 63) - 1)
# admit results (>= 0: row * 2 + doorbell owed)
BAD_VALUE, RING_FULL, TABLE_FULL, DECIDED, WORKER_BEHIND = -1, -2, -3, -4, -5
STUCK_FACTOR = 4                      # worker_refusal: behind_ns x this without moving is stuck
# value check kinds (column 1 of ``checks``)
CHECK_F32, CHECK_F64, CHECK_BOOL = 4, 8, 1
# byte offsets of the response slot's fields (the kernels read and write its raw bytes)
S_TOKEN, S_SCORE, S_GEN, S_ACTION, S_FLAGS, S_NFIRED, S_FIRED, S_ERROR = (
    RESPONSE_SLOT_DTYPE.fields[f][1] for f in ("token", "score", "generation", "action", "flags",
                                               "nfired", "fired", "error"))
SLOT_BYTES = RESPONSE_SLOT_DTYPE.itemsize
REPLY_BYTES = wire.REPLY_HEADER_SIZE + wire.DECISION_SIZE     # one decision
FIRED_OVERFLOW = int(DecisionFlag.FIRED_OVERFLOW)
REPLY_MAGIC, PROTOCOL_VERSION = wire.REPLY_MAGIC, wire.PROTOCOL_VERSION


@njit(cache=True, inline="always")
def _get(buf, off, nbytes):
    """Unsigned little-endian integer of ``nbytes`` at ``off`` (uint64)."""
    v = np.uint64(0)
    for k in range(nbytes):
        v |= np.uint64(buf[off + k]) << np.uint64(8 * k)
    return v


@njit(cache=True, inline="always")
def _put(buf, off, nbytes, value):
    v = np.uint64(value)
    for k in range(nbytes):
        buf[off + k] = np.uint8((v >> np.uint64(8 * k)) & np.uint64(0xFF))


@njit(cache=True)
def values_ok(body, off, checks):
    """The record at ``body[off:]`` has only finite floats and 0/1 bools."""
    for c in range(checks.shape[0]):
        o = off + checks[c, 0]
        kind = checks[c, 1]
        if kind == CHECK_F64:
            if (_get(body, o, 8) >> np.uint64(52)) & np.uint64(0x7FF) == np.uint64(0x7FF):
                return False
        elif kind == CHECK_F32:
            if (_get(body, o, 4) >> np.uint64(23)) & np.uint64(0xFF) == np.uint64(0xFF):
                return False
        elif body[o] > 1:
            return False
    return True


@njit(cache=True, inline="always")
def write_slot(slot, token, now, cid, rid, src, src_off, rsize, ev_off):
    """One request slot: token, arrival stamp, the request's client_id and request_id (the
    worker journals them), the record's ``rsize`` bytes from ``src[src_off:]`` at ``ev_off``,
    zeroed padding (the bytes a worker reads are all set). Offsets: shm.types.REQUEST_HEAD."""
    _put(slot, SLOT_TOKEN_OFFSET, 8, token)
    _put(slot, SLOT_ARRIVAL_OFFSET, 8, now)
    _put(slot, SLOT_CLIENT_ID_OFFSET, 8, cid)
    _put(slot, SLOT_REQUEST_ID_OFFSET, 8, rid)
    copy_bytes(slot, ev_off, src, src_off, rsize)
    zero_bytes(slot, ev_off + rsize, slot.shape[0] - ev_off - rsize)


@njit(cache=True)
def queue_age(ring_hdr, ring_u8, ring_cap, now):
    """How long the oldest event a worker has not finished (queued, or in the batch it is
    evaluating) has been in its request ring: ``now`` minus that slot's arrival stamp; 0
    when the ring is empty. Called by the ring's producer (the ingress), which wrote the slot
    and alone may overwrite it."""
    pos = load_acquire(ring_hdr, CONSUMER_POSITION_WORD)   # pairs with the worker's release
    if pos == ring_hdr[PRODUCER_POSITION_WORD]:            # own field
        return 0
    return now - np.int64(_get(ring_u8[pos & (ring_cap - 1)], SLOT_ARRIVAL_OFFSET, 8))


@njit(cache=True)
def consumer_still_ns(ring_hdr, now):
    """How long the worker's consumer position has stood still, as its producer (the
    ingress) has seen it: each call notes a position it has not seen before with ``now``
    (producer-owned header words, no other process writes them)."""
    pos = load_acquire(ring_hdr, CONSUMER_POSITION_WORD)   # pairs with the worker's release
    if pos != ring_hdr[PRODUCER_SEEN_CONSUMER_WORD] or ring_hdr[PRODUCER_SEEN_CONSUMER_NS_WORD] == 0:
        ring_hdr[PRODUCER_SEEN_CONSUMER_WORD] = pos
        ring_hdr[PRODUCER_SEEN_CONSUMER_NS_WORD] = now
    return now - ring_hdr[PRODUCER_SEEN_CONSUMER_NS_WORD]


@njit(cache=True)
def worker_refusal(ring_hdr, ring_u8, ring_cap, n, now, behind_ns):
    """The admission policy's question for one worker (ingress.admission), asked by both
    paths: RING_FULL when its request ring has no room for ``n`` more slots; WORKER_BEHIND
    when its oldest unfinished event has waited over ``behind_ns`` (queue_age) while the
    worker moves (it is overloaded: new work would wait longer still), or over
    STUCK_FACTOR * ``behind_ns`` whatever it does (stuck); else 0. A worker that stopped
    moving less than that ago is stalled, not behind: what is sent to it now waits for it
    and is decided when it runs again, instead of being refused at every resend."""
    if ring_cap - RK._occupancy(ring_hdr) < n:
        return RING_FULL
    still = consumer_still_ns(ring_hdr, now)
    age = queue_age(ring_hdr, ring_u8, ring_cap, now)
    if age > behind_ns and (still < behind_ns or age > STUCK_FACTOR * behind_ns):
        return WORKER_BEHIND
    return 0


@njit(cache=True)
def admit(body, hdr_off, rsize, checks, fmask, cid, rid, keyed, dd_index, dd_ent, dd_pool_size,
          ring_hdr, ring_u8, ring_cap, ev_off, worker, ft, free, meta, fdec, seq, now, deadline,
          behind_ns):
    """Admit a one-event binary request whose header the caller checked: returns row * 2 +
    (1 if the worker sleeps and is owed a doorbell), or BAD_VALUE (non-finite float, bool not
    0/1: the general path names it), DECIDED (the key was decided, for these events or
    others: the general path answers it from the window or refuses it), TABLE_FULL, or
    worker_refusal's RING_FULL or WORKER_BEHIND (the general path answers OVERLOADED).
    ``keyed``: (cid, rid) is an idempotency key (client id set, window on); ``fmask``: the
    record's field mask (ingress.dedup.record_mask: its hash leaves the padding out)."""
    if not values_ok(body, hdr_off, checks):
        return BAD_VALUE
    rhash = np.int64(0)
    if keyed:
        rhash = DK.records_hash(body, hdr_off, rsize, fmask)
        if DK.lookup(dd_index, dd_ent, dd_pool_size, cid, rid, now, 1, rhash) != -1:
            return DECIDED
    top = meta[TOP]
    if top == 0:
        return TABLE_FULL
    refused = worker_refusal(ring_hdr, ring_u8, ring_cap, 1, now, behind_ns)
    if refused:
        return refused
    pos = RK._claim_position(ring_hdr, 1, ring_cap)
    if pos < 0:                                 # not after worker_refusal: one producer
        return RING_FULL
    row = free[top - 1]
    meta[TOP] = top - 1
    meta[USED] += 1
    token = fast_token(seq, row)
    write_slot(ring_u8[pos & (ring_cap - 1)], token, now, cid, rid, body, hdr_off, rsize, ev_off)
    owed = RK._publish(ring_hdr, pos + 1)
    r = ft[row]
    r[SEQ] = seq
    r[ARRIVAL] = now
    r[ROUTED] = now
    r[FIRST] = 0
    r[DEADLINE] = deadline
    r[WORKER] = worker
    r[CID] = cid
    r[RID] = rid
    r[KEYED] = keyed
    r[RHASH] = rhash
    d = fdec[row]
    for k in range(SLOT_BYTES):
        d[k] = 0
    if deadline < meta[MIN_DEADLINE]:
        meta[MIN_DEADLINE] = deadline
    if row >= meta[HIGH]:
        meta[HIGH] = row + 1
    return row * 2 + owed


@njit(cache=True, inline="always")
def encode_header(out, n, rid):
    """The binary reply header for ``n`` decisions (docs/PROTOCOL.md) into ``out[:24]``."""
    _put(out, 0, 4, REPLY_MAGIC)
    _put(out, 4, 2, PROTOCOL_VERSION)
    _put(out, 6, 2, 0)
    _put(out, 8, 4, n)
    _put(out, 12, 4, 0)
    _put(out, 16, 8, rid)


@njit(cache=True, inline="always")
def encode_decision(d, out, o, flag_errors):
    """One decision record (wire.DECISION_SIZE bytes) for the response slot bytes ``d``, at
    ``out[o:]``."""
    nfired = _get(d, S_NFIRED, 2)
    flags = d[S_FLAGS]
    if nfired > MAX_FIRED:
        flags |= FIRED_OVERFLOW
    out[o] = d[S_ACTION]
    out[o + 1] = flags
    _put(out, o + 2, 2, flag_errors[flags])
    _put(out, o + 4, 2, nfired)
    _put(out, o + 6, 2, 0)
    copy_bytes(out, o + 8, d, S_GEN, 4)
    zero_bytes(out, o + 12, 4)
    copy_bytes(out, o + 16, d, S_SCORE, 8)
    copy_bytes(out, o + 24, d, S_FIRED, 2 * MAX_FIRED)


@njit(cache=True)
def encode_reply(d, out, rid, flag_errors):
    """The binary reply (header + one decision record) for the response slot bytes ``d``,
    into ``out`` (REPLY_BYTES): the same bytes as Codec.encode_reply."""
    encode_header(out, 1, rid)
    encode_decision(d, out, wire.REPLY_HEADER_SIZE, flag_errors)


@njit(cache=True)
def finish_row(row, code, now, ft, free, meta, fdec, fout, flag_errors, instrument, c_eval,
               c_stage, bounds, c_req, c_dec, dd_meta, dd_index, dd_ent, dd_pool, window_ns):
    """Answer row ``row`` (its decision filled in): encode the reply into ``fout[row]``,
    remember it in the idempotency window if keyed, count it, free the row. The caller sends
    ``fout[row]`` before it admits anything else (the row's bytes stay until reused)."""
    r = ft[row]
    d = fdec[row]
    encode_reply(d, fout[row], r[RID], flag_errors)
    if r[KEYED]:
        DK.insert(dd_meta, dd_index, dd_ent, dd_pool, r[CID], r[RID], now + window_ns, now, d, r[RHASH])
    if instrument:
        c_req[code] += 1
        a = d[S_ACTION]
        if a < c_dec.shape[0]:
            c_dec[a] += 1
        _observe_request(c_eval, c_stage, bounds, r[ARRIVAL], r[ROUTED], r[FIRST], now)
    r[SEQ] = 0
    free[meta[TOP]] = row
    meta[TOP] += 1
    meta[USED] -= 1


@njit(cache=True)
def deliver(resp_u8, pos, n, done, now, ft, free, meta, fdec, fout, flag_errors, instrument,
            c_eval, c_stage, bounds, c_req, c_dec, dd_meta, dd_index, dd_ent, dd_pool, window_ns):
    """File the fast responses among ``n`` drained slots from position ``pos`` of a response
    ring (its bytes ``resp_u8``, capacity x 64): a matching row gets its decision and is
    finished (finish_row); its row number goes to ``done``. Returns (rows done, slots that
    belong to the general path). Responses of rows already answered are dropped."""
    mask = resp_u8.shape[0] - 1
    ndone = 0
    nslow = 0
    for j in range(n):
        s = resp_u8[(pos + j) & mask]
        tok = _get(s, S_TOKEN, 8)
        if not is_fast(tok):
            nslow += 1
            continue
        row = token_index(tok)
        seq = token_seq(tok)
        if row >= ft.shape[0] or ft[row, SEQ] != seq:
            continue                            # answered already (deadline): drop
        d = fdec[row]
        for k in range(SLOT_BYTES):
            d[k] = s[k]
        ft[row, FIRST] = now
        finish_row(row, 0, now, ft, free, meta, fdec, fout, flag_errors, instrument, c_eval,
                   c_stage, bounds, c_req, c_dec, dd_meta, dd_index, dd_ent, dd_pool, window_ns)
        done[ndone] = row
        ndone += 1
    return ndone, nslow


@njit(cache=True)
def expired(ft, meta, now, out):
    """Rows in use whose deadline has passed (into ``out``; returns how many); the earliest
    deadline of the others becomes meta[MIN_DEADLINE]."""
    k = 0
    lo = NO_DEADLINE
    for row in range(meta[HIGH]):
        if ft[row, SEQ] == 0:
            continue
        dl = ft[row, DEADLINE]
        if dl <= now:
            out[k] = row
            k += 1
        elif dl < lo:
            lo = dl
    meta[MIN_DEADLINE] = lo
    return k


@njit(cache=True)
def default_decision(d, action, flag, code):
    """A default decision (deadline passed, worker lost) in slot bytes ``d``: generation 0."""
    for k in range(SLOT_BYTES):
        d[k] = 0
    d[S_ACTION] = action
    d[S_FLAGS] = flag
    _put(d, S_ERROR, 2, code)
