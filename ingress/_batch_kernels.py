"""Compiled parts of the ingress's general path (ingress.router, ingress.codec) for binary
requests of any size: value checks of N records, routing them into a worker's request ring,
filing the responses into their requests, and the N-decision reply.

Each replaces a chain of numpy calls of a few microseconds each: a 64-event request cost
the ingress about 200 us of Python and numpy on this machine (py-spy: decode, staging copies,
shard, run detection, fancy-indexed filing, eight column copies per reply), and in batched
runs the ingress was the stage every request waited for. Byte helpers, the slot writer and
the reply encoder are the fast path's (ingress._fast_kernels): one layout, one writer.
With the compiled loop, ``finish_send`` answers a finished binary request in one call.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ingress import _fast_kernels as FK
from ingress import _dedup_kernels as DK
from ingress import wire
from ingress import zmqc
from ingress._loop_kernels import INTERNAL, _send
from shm import _ring_kernels as RK
from shm.control import _observe_request
from shm.tokens import general_seq, is_fast, token_index

_GEN = FK.S_GEN                       # generation 0 = no decision yet


@njit(cache=True)
def first_bad_record(recs, n, rsize, checks):
    """Index of the first of ``n`` records (bytes ``recs``) with a non-finite float or a bool
    byte other than 0/1, or -1: the codec names the field only when there is one."""
    for i in range(n):
        if not FK.values_ok(recs, i * rsize, checks):
            return i
    return -1


@njit(cache=True)
def stage(recs, n, rsize, widx, w, ring_hdr, ring_u8, ring_cap, ev_off, token0, now, cid, rid):
    """Write the records ``i`` of ``recs`` (n x rsize bytes) routed to worker ``w``
    (``widx[i] == w``; every record when ``widx`` is empty) into its request ring, token
    ``token0 + i`` (token0: the request's token of index 0, shm.tokens), arrival ``now``, the
    request's ids ``cid``, ``rid`` (int64 bit patterns), and publish them at once. Returns 1
    if the worker sleeps and is owed a doorbell, 0, or -1 when they do not fit (nothing
    written)."""
    m = n
    if widx.shape[0]:
        m = 0
        for i in range(n):
            m += widx[i] == w
    pos = RK._claim_position(ring_hdr, m, ring_cap)
    if pos < 0:
        return -1
    mask = ring_cap - 1
    j = 0
    for i in range(n):
        if widx.shape[0] and widx[i] != w:
            continue
        FK.write_slot(ring_u8[(pos + j) & mask], np.uint64(token0 + i), now, cid, rid, recs,
                      i * rsize, rsize, ev_off)
        j += 1
    # _publish's release store keeps the slot stores above before the new position
    return RK._publish(ring_hdr, pos + m)


@njit(cache=True)
def runs(resp_u8, pos, n, out):
    """Split ``n`` drained response slots from position ``pos`` (ring bytes ``resp_u8``)
    into runs of consecutive slots of one general-path request: ``out[k] = (first, end,
    sequence)`` in drain order; the fast path's slots (shm.tokens.is_fast) belong to no run.
    Returns the number of runs (``out`` has room for ``n``)."""
    mask = resp_u8.shape[0] - 1
    k = 0
    cur = np.int64(-1)
    for j in range(n):
        tok = FK._get(resp_u8[(pos + j) & mask], FK.S_TOKEN, 8)
        if is_fast(tok):
            cur = -1
            continue
        seq = general_seq(tok)
        if seq == cur and out[k - 1, 1] == j:
            out[k - 1, 1] = j + 1
            continue
        out[k, 0] = j
        out[k, 1] = j + 1
        out[k, 2] = seq
        cur = seq
        k += 1
    return k


@njit(cache=True)
def file_run(resp_u8, pos, first, end, raw):
    """Copy the response slots ``first..end`` (drain order from ``pos``) into their rows of
    the request's decisions ``raw`` (n x slot bytes), except rows that already have one (a
    restarted worker re-decided an event its predecessor answered: the first answer stays).
    Returns the number of rows filled."""
    mask = resp_u8.shape[0] - 1
    filled = 0
    for j in range(first, end):
        s = resp_u8[(pos + j) & mask]
        i = token_index(FK._get(s, FK.S_TOKEN, 8))
        if i >= raw.shape[0]:
            continue
        row = raw[i]
        if FK._get(row, _GEN, 4) != 0:
            continue
        for b in range(row.shape[0]):
            row[b] = s[b]
        filled += 1
    return filled


@njit(cache=True)
def encode_replies(raw, out, rid, flag_errors):
    """The binary reply for the decisions ``raw`` (n x slot bytes) into ``out`` (header +
    n decision records): header and records exactly as the fast path encodes one."""
    n = raw.shape[0]
    FK.encode_header(out, n, rid)
    for i in range(n):
        FK.encode_decision(raw[i], out, wire.REPLY_HEADER_SIZE + i * wire.DECISION_SIZE, flag_errors)


@njit(cache=True)
def count_actions(raw, counts):
    """Add each decision's action (allow/review/block) of ``raw`` to ``counts``."""
    for i in range(raw.shape[0]):
        a = raw[i, FK.S_ACTION]
        if a < counts.shape[0]:
            counts[a] += 1


@njit(cache=True)
def finish_send(h, ident, delim, raw, out, idbuf, rid, flag_errors, code, c_req, instrument,
                c_dec, c_eval, c_stage, bounds, arrival, routed, first, keyed, cid, rhash,
                dd_meta, dd_index, dd_ent, dd_pool, window_ns, ts):
    """GeneralPath._finish for a binary request with one envelope, in one call: its reply
    (``encode_replies`` into ``out``) sent to connection ``ident`` (and an empty delimiter
    frame if ``delim``) on socket ``h`` without blocking (a frame libzmq cannot queue drops
    the reply, counted INTERNAL, as Replies.send_frames); then, as there, the decision kept
    in the idempotency window if ``keyed`` (key ``cid``, ``rid``) and the request counted
    with code ``code`` when ``instrument``. ``idbuf``: room for the identity's bytes."""
    n = raw.shape[0]
    encode_replies(raw, out, rid, flag_errors)
    for k in range(len(ident)):
        idbuf[k] = ident[k]
    more = zmqc.SNDMORE | zmqc.DONTWAIT
    r = _send(h, idbuf, 0, len(ident), more)
    if r == 0 and delim:
        r = _send(h, idbuf, 0, 0, more)
    if r == 0:
        r = _send(h, out, 0, wire.REPLY_HEADER_SIZE + n * wire.DECISION_SIZE, zmqc.DONTWAIT)
    if r < 0:
        c_req[INTERNAL] += 1
    now = zmqc.monotonic_ns(ts)
    if keyed:
        DK.insert(dd_meta, dd_index, dd_ent, dd_pool, cid, rid, now + window_ns, now,
                  raw.reshape(n * raw.shape[1]), rhash)
    if not instrument:
        return
    c_req[code] += 1
    count_actions(raw, c_dec)
    _observe_request(c_eval, c_stage, bounds, arrival, routed, first, now)
