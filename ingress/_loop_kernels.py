"""Compiled parts of the ingress's compiled loop (ingress.compiledloop).

``read_batch`` receives messages from the ROUTER socket through libzmq (ingress.zmqc) and
admits the fast path's requests (binary, one event) itself: the same checks as
FastPath.admit, then the fast path's own compiled ``admit`` (ingress._fast_kernels, which
asks ``worker_refusal``). Whatever it declines, it hands to Python with the message's frames
in ``buf`` (status HANDOFF): Python runs the router's per-message code on it unchanged, so
JSON, batches, errors, retries, refusals and shedding keep their one implementation.
``deliver_send`` files a drained batch of responses (the fast path's ``deliver``) and sends
the replies. The in-flight limits are judged exactly: a request is declined to Python when
the connection's share could be reached (in flight >= max_inflight_per_peer), or when its
idempotency key could be in flight (on the general path, or in a fast row: ``key_row``).

Per row, the connection's identity (``env_id`` / ``env_len``) and whether the request came
with an empty delimiter frame (``env_delim``) replace the envelope list of the Python path;
``dup`` marks a row a retry was attached to (the general path answers those in Python).
"""
from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from shm.types import ErrorCode
from ingress import _fast_kernels as K
from ingress import _owner_kernels as OK
from ingress import wire
from ingress import zmqc
from ingress.admission import INFLIGHT, SEQ
from ingress._fast_kernels import _get
from shm import _ring_kernels as RK

MAX_FRAMES = 4                        # frames kept of one message (router.MAX_FRAMES)
ID_BYTES = 256                        # a ROUTER identity is at most 255 bytes
# read_batch statuses
EMPTY, FULL, HANDOFF, TOO_MANY, RING, ERROR = range(6)
# drain_packed statuses: every ring empty; a fired list is queued (Python drains that ring
# from ``readable`` on); replies sent but some slots (nslow) or retries (ndup) are Python's
DRAINED, FIRED, DELIVERED = range(3)
# loop state cells
BACKLOG_SINCE, BACKLOG_READS = 0, 1
STATE_WORDS = 2
# conf cells (CompiledLoop fills them once; GENERAL_KEYED before every read_batch)
(BODY_LEN, RSIZE, SHASH, KEYED_OK, MAX_INFLIGHT, MAX_PER_PEER, N_WORKERS, SHARD_OFF,
 SHARD_WIDTH, SHARD_SIGNED, EV_OFF, BEHIND_NS, DEADLINE_NS, FRAME_CAP, SHED_AFTER_NS,
 READ_BATCH, DEFER_NS, GENERAL_KEYED, PARTITIONED) = range(19)
CONF_WORDS = 19
FMASK = CONF_WORDS           # then the record's field mask: RSIZE / 8 words (dedup.record_mask)
_F = wire.REQUEST_HEADER_DTYPE.fields
H_MAGIC, H_VERSION, H_FLAGS, H_SHASH, H_COUNT, H_DEADLINE, H_CID, H_RID = (
    _F[f][1] for f in ("magic", "version", "flags", "schema_hash", "count", "deadline_us",
                       "client_id", "request_id"))
HDR = wire.REQUEST_HEADER_SIZE
REQUEST_MAGIC, PROTOCOL_VERSION = wire.REQUEST_MAGIC, wire.PROTOCOL_VERSION
UNKNOWN_FLAGS = 0xFFFF & ~wire.KNOWN_HEADER_FLAGS
INTERNAL = int(ErrorCode.INTERNAL)
_MORE_NOWAIT = zmqc.SNDMORE | zmqc.DONTWAIT


@njit(cache=True)
def recv_message(h, msg, buf, fsize, frame_cap):
    """One ROUTER message: frame k into ``buf[k * frame_cap:]``, its size in ``fsize[k]``.
    Returns (frames kept, 1 if more frames follow unread: over MAX_FRAMES), or (-errno, 0)
    when the first receive fails (-EAGAIN: nothing queued)."""
    size, more = zmqc.recv_frame(h, msg, buf, 0, zmqc.DONTWAIT)
    while size == -zmqc.EINTR:         # a signal: try again, as pyzmq's recv does
        size, more = zmqc.recv_frame(h, msg, buf, 0, zmqc.DONTWAIT)
    if size < 0:
        return size, 0
    fsize[0] = size
    k = 1
    while True:                        # a ROUTER message is identity + >= 1 frame: no wait
        size, more = zmqc.recv_frame(h, msg, buf[k * frame_cap:(k + 1) * frame_cap], 0, 0)
        while size == -zmqc.EINTR:
            size, more = zmqc.recv_frame(h, msg, buf[k * frame_cap:(k + 1) * frame_cap], 0, 0)
        if size < 0:
            return size, 0
        fsize[k] = size
        k += 1
        if not more:
            return k, 0
        if k == MAX_FRAMES:
            return k, 1


@njit(cache=True)
def key_row(ft, meta, cid, rid):
    """The fast row in flight with idempotency key (cid, rid), or -1."""
    for row in range(meta[K.HIGH]):
        r = ft[row]
        if r[K.SEQ] != 0 and r[K.KEYED] and r[K.CID] == cid and r[K.RID] == rid:
            return row
    return -1


@njit(cache=True, inline="always")
def same_identity(stored, ident, n):
    for k in range(n):
        if stored[k] != ident[k]:
            return False
    return True


@njit(cache=True)
def peer_count(ft, meta, env_id, env_len, ident, n):
    """Fast rows in flight of the connection whose identity is ``ident[:n]``."""
    c = 0
    for row in range(meta[K.HIGH]):
        if ft[row, K.SEQ] != 0 and env_len[row] == n and same_identity(env_id[row], ident, n):
            c += 1
    return c


# --- arguments by address ----------------------------------------------------------------
# Numba unboxes every array argument at each call from Python (about 0.1 us each: 2.5 us for
# read_batch's, measured here); the loop instead passes one table of (address, rows, columns)
# per call (``pack``) and these rebuild the arrays in compiled code. The arrays are the
# router's, alive while it runs.
R_HDR, R_HDR_LEN, R_U8, R_CAP, R_SLOT = range(5)      # ``rings``: one row per worker


@intrinsic
def _voidptr(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


@njit(cache=True, inline="always")
def _i64(p, i):
    return carray(_voidptr(p[i, 0]), (p[i, 1],), np.int64)


@njit(cache=True, inline="always")
def _i64x2(p, i):
    return carray(_voidptr(p[i, 0]), (p[i, 1], p[i, 2]), np.int64)


@njit(cache=True, inline="always")
def _u8(p, i):
    return carray(_voidptr(p[i, 0]), (p[i, 1],), np.uint8)


@njit(cache=True, inline="always")
def _u8x2(p, i):
    return carray(_voidptr(p[i, 0]), (p[i, 1], p[i, 2]), np.uint8)


@njit(cache=True, inline="always")
def _u16(p, i):
    return carray(_voidptr(p[i, 0]), (p[i, 1],), np.uint16)


@njit(cache=True, inline="always")
def request_ring(rings, w):
    """Worker ``w``'s request ring: (header words, slot bytes)."""
    r = rings[w]
    return (carray(_voidptr(r[R_HDR]), (r[R_HDR_LEN],), np.int64),
            carray(_voidptr(r[R_U8]), (r[R_CAP], r[R_SLOT]), np.uint8))


# pack rows of read_packed and deliver_packed, in order, as (dtype, dimensions)
READ_PACK = ("msg", "buf", "fsize", "ts", "state", "conf", "checks", "dd_index", "dd_ent", "ft",
             "free", "meta", "fdec", "cells", "env_id", "env_len", "env_delim", "dup", "owed", "peer", "own")
DELIVER_PACK = ("done", "ft", "free", "meta", "fdec", "fout", "flag_errors", "c_eval", "c_stage",
                "bounds", "c_req", "c_dec", "dd_meta", "dd_index", "dd_ent", "dd_pool", "env_id",
                "env_len", "env_delim", "dup", "cells", "ts")
KINDS = {"msg": ("i8", 1), "buf": ("u1", 1), "fsize": ("i8", 1), "ts": ("i8", 1), "state": ("i8", 1),
         "conf": ("i8", 1), "checks": ("i8", 2), "dd_index": ("i8", 1), "dd_ent": ("i8", 2),
         "ft": ("i8", 2), "free": ("i8", 1), "meta": ("i8", 1), "fdec": ("u1", 2), "cells": ("i8", 1),
         "env_id": ("u1", 2), "env_len": ("i8", 1), "env_delim": ("u1", 1), "dup": ("u1", 1),
         "owed": ("u1", 1), "done": ("i8", 1), "fout": ("u1", 2), "flag_errors": ("u2", 1),
         "c_eval": ("i8", 1), "c_stage": ("i8", 2), "bounds": ("i8", 1), "c_req": ("i8", 1),
         "c_dec": ("i8", 1), "dd_meta": ("i8", 1), "dd_pool": ("u1", 1), "peer": ("i8", 2),
         "own": ("i8", 1)}


def pack(arrays: dict, names: tuple, kinds: dict = KINDS) -> np.ndarray:
    """The (address, rows, columns) table of ``arrays[name]`` for ``names``; raises when one
    is not the dtype and shape the kernels rebuild (``kinds``), C-contiguous and writable."""
    t = np.zeros((len(names), 3), np.int64)
    for i, name in enumerate(names):
        a = arrays[name]
        dt, nd = kinds[name]
        if a.dtype != np.dtype(dt) or a.ndim != nd or not a.flags.c_contiguous or not a.flags.writeable:
            raise RuntimeError(f"compiled loop: array={name} dtype={a.dtype} ndim={a.ndim} "
                               f"c_contiguous={a.flags.c_contiguous}: expected {np.dtype(dt)} {nd}-d")
        t[i] = a.ctypes.data, a.shape[0], a.shape[1] if nd == 2 else 0
    return t


def pack_rings(hdrs: list, slots: list) -> np.ndarray:
    """``rings`` for request_ring (or the response rings: header columns unused)."""
    t = np.zeros((len(slots), 5), np.int64)
    for w, (hdr, u8) in enumerate(zip(hdrs, slots)):
        if hdr is not None:
            t[w, R_HDR], t[w, R_HDR_LEN] = hdr.ctypes.data, hdr.shape[0]
        t[w, R_U8], t[w, R_CAP], t[w, R_SLOT] = u8.ctypes.data, u8.shape[0], u8.shape[1]
    return t


@njit(cache=True, inline="always")
def body_offset(fsize, nframes, cap):
    """Where a request's body starts in the read buffer (identity, [empty,] body), or -1."""
    if nframes == 3:
        return 2 * cap if fsize[1] == 0 else -1
    return cap if nframes == 2 else -1


@njit(cache=True)
def admit_one(buf, fsize, nframes, now, ts, conf, checks, dd_index, dd_ent, dd_pool_size,
              rings, ft, free, meta, fdec, cells, env_id, env_len, env_delim, dup, owed, msg, peer, own):
    """FastPath.admit for the message in ``buf``: True when admitted (counted in ``cells``,
    its identity and sender, zmqc.PEER, kept); False: nothing changed, Python takes it."""
    bo = body_offset(fsize, nframes, conf[FRAME_CAP])
    if bo < 0:
        return False
    if fsize[nframes - 1] != conf[BODY_LEN] or fsize[0] >= ID_BYTES:
        return False
    if _get(buf, bo + H_MAGIC, 4) != REQUEST_MAGIC or _get(buf, bo + H_VERSION, 2) != PROTOCOL_VERSION \
            or _get(buf, bo + H_COUNT, 4) != 1 or np.int64(_get(buf, bo + H_SHASH, 8)) != conf[SHASH] \
            or _get(buf, bo + H_FLAGS, 2) & UNKNOWN_FLAGS:
        return False
    inflight = cells[INFLIGHT]
    if inflight >= conf[MAX_INFLIGHT] or inflight >= conf[MAX_PER_PEER]:
        return False                           # Python judges the limits exactly
    cid = np.int64(_get(buf, bo + H_CID, 8))
    rid = np.int64(_get(buf, bo + H_RID, 8))
    keyed = 1 if cid != 0 and conf[KEYED_OK] else 0
    if keyed and (conf[GENERAL_KEYED] > 0 or key_row(ft, meta, cid, rid) >= 0):
        return False
    h = OK.shard_hash(buf, bo + HDR + conf[SHARD_OFF], conf[SHARD_WIDTH], conf[SHARD_SIGNED])
    if conf[PARTITIONED] and not OK.owned(own, h, ts):
        return False                           # another node's partition: Python answers NOT_OWNER
    w = np.int64(h % np.uint64(conf[N_WORKERS]))
    deadline_us = np.int64(_get(buf, bo + H_DEADLINE, 4))
    deadline = now + deadline_us * 1000 if deadline_us else now + conf[DEADLINE_NS]
    body = buf[bo:bo + conf[BODY_LEN]]
    ring_hdr, ring_u8 = request_ring(rings, w)
    res = K.admit(body, HDR, conf[RSIZE], checks, conf[FMASK:], cid, rid, keyed, dd_index, dd_ent,
                  dd_pool_size, ring_hdr, ring_u8, rings[w, R_CAP], conf[EV_OFF], w, ft, free, meta, fdec,
                  cells[SEQ], now, deadline, conf[BEHIND_NS])
    if res < 0:
        return False
    cells[SEQ] += 1
    cells[INFLIGHT] += 1
    row = res >> 1
    ft[row, K.ROUTED] = zmqc.monotonic_ns(ts)
    if res & 1:
        owed[w] = 1
    n = fsize[0]
    for k in range(n):
        env_id[row, k] = buf[k]
    env_len[row] = n
    env_delim[row] = 1 if nframes == 3 else 0
    dup[row], peer[row, 0], peer[row, 1] = 0, msg[zmqc.PEER], msg[zmqc.PEER + 1]
    return True


@njit(cache=True)
def read_batch(h, msg, buf, fsize, ts, limit, owed_since, state, conf, checks, dd_index, dd_ent,
               dd_pool_size, rings, ft, free, meta, fdec, cells, env_id, env_len, env_delim, dup, owed, peer,
               own):
    """Receive and admit up to ``limit`` messages. Returns (admitted, status, frames, t):
    EMPTY (nothing queued), FULL (``limit`` admitted), RING (the deferred doorbells are due:
    the caller rings them and calls again), HANDOFF (the message in ``buf``, of ``frames``
    frames, received at ``t``, is the caller's), TOO_MANY (likewise, with frames unread),
    ERROR (``frames`` is the errno of a failed receive)."""
    n = 0
    cap = conf[FRAME_CAP]
    while n < limit:
        k, more = recv_message(h, msg, buf, fsize, cap)
        if k < 0:
            if k == -zmqc.EAGAIN:
                state[BACKLOG_SINCE] = 0           # the queue is empty
                return n, EMPTY, 0, 0
            return n, ERROR, -k, 0
        if more:
            return n, TOO_MANY, k, 0
        t = zmqc.monotonic_ns(ts)
        if state[BACKLOG_SINCE] == 0:              # the queue is non-empty from here on
            state[BACKLOG_SINCE] = t
            state[BACKLOG_READS] = 0
        state[BACKLOG_READS] += 1
        if t - state[BACKLOG_SINCE] > conf[SHED_AFTER_NS] and state[BACKLOG_READS] > conf[READ_BATCH]:
            return n, HANDOFF, k, t                # shedding: the router judges the peer's share
        if not admit_one(buf, fsize, k, t, ts, conf, checks, dd_index, dd_ent, dd_pool_size, rings,
                         ft, free, meta, fdec, cells, env_id, env_len, env_delim, dup, owed, msg, peer, own):
            return n, HANDOFF, k, t
        n += 1
        if owed_since and t - owed_since > conf[DEFER_NS]:
            return n, RING, 0, t
    return n, FULL, 0, 0


@njit(cache=True)
def send_reply(h, row, env_id, env_len, env_delim, fout, c_req):
    """Row ``row``'s reply (``fout[row]``) to its connection: identity, (empty,) body, never
    blocking (Replies.send_frames); a frame libzmq cannot queue drops the reply, counted
    INTERNAL like there."""
    r = _send(h, env_id, row * ID_BYTES, env_len[row], _MORE_NOWAIT)
    if r == 0 and env_delim[row]:
        r = _send(h, env_id, 0, 0, _MORE_NOWAIT)
    if r == 0:
        r = _send(h, fout, row * fout.shape[1], fout.shape[1], zmqc.DONTWAIT)
    if r < 0:
        c_req[INTERNAL] += 1


@njit(cache=True, inline="always")
def _send(h, src, off, n, flags):
    """zmqc.send_frame, again after a signal (EINTR), as pyzmq's send does."""
    r = zmqc.send_frame(h, src, off, n, flags)
    while r == -zmqc.EINTR:
        r = zmqc.send_frame(h, src, off, n, flags)
    return r


@njit(cache=True)
def deliver_send(h, resp_u8, pos, n, done, now, ft, free, meta, fdec, fout, flag_errors,
                 instrument, c_eval, c_stage, bounds, c_req, c_dec, dd_meta, dd_index, dd_ent,
                 dd_pool, window_ns, env_id, env_len, env_delim, dup, cells):
    """The fast path's ``deliver``, then each finished row's reply sent and its request no
    longer in flight. Returns (rows with retries attached, into ``done``; slots that belong
    to the general path)."""
    ndone, nslow = K.deliver(resp_u8, pos, n, done, now, ft, free, meta, fdec, fout, flag_errors,
                             instrument, c_eval, c_stage, bounds, c_req, c_dec, dd_meta, dd_index,
                             dd_ent, dd_pool, window_ns)
    k = 0
    for j in range(ndone):
        row = done[j]
        cells[INFLIGHT] -= 1
        send_reply(h, row, env_id, env_len, env_delim, fout, c_req)
        if dup[row]:
            done[k] = row
            k += 1
    return k, nslow


@njit(cache=True)
def read_packed(h, p, rings, limit, owed_since, dd_pool_size):
    """read_batch with its arrays from ``p`` (READ_PACK) and ``rings`` (pack_rings)."""
    return read_batch(h, _i64(p, 0), _u8(p, 1), _i64(p, 2), _i64(p, 3), limit, owed_since,
                      _i64(p, 4), _i64(p, 5), _i64x2(p, 6), _i64(p, 7), _i64x2(p, 8), dd_pool_size,
                      rings, _i64x2(p, 9), _i64(p, 10), _i64(p, 11), _u8x2(p, 12), _i64(p, 13),
                      _u8x2(p, 14), _i64(p, 15), _u8(p, 16), _u8(p, 17), _u8(p, 18), _i64x2(p, 19),
                      _i64(p, 20))


@njit(cache=True)
def deliver_packed(h, w, pos, n, now, instrument, window_ns, p, resp):
    """deliver_send for worker ``w``'s response ring (``resp``: pack_rings of the response
    rings) with its arrays from ``p`` (DELIVER_PACK)."""
    r = resp[w]
    resp_u8 = carray(_voidptr(r[R_U8]), (r[R_CAP], r[R_SLOT]), np.uint8)
    return deliver_send(h, resp_u8, pos, n, _i64(p, 0), now, _i64x2(p, 1), _i64(p, 2), _i64(p, 3),
                        _u8x2(p, 4), _u8x2(p, 5), _u16(p, 6), instrument, _i64(p, 7), _i64x2(p, 8),
                        _i64(p, 9), _i64(p, 10), _i64(p, 11), _i64(p, 12), _i64(p, 13),
                        _i64x2(p, 14), _u8(p, 15), window_ns, _u8x2(p, 16), _i64(p, 17), _u8(p, 18),
                        _u8(p, 19), _i64(p, 20))


@njit(cache=True)
def drain_packed(h, w0, instrument, window_ns, p, resp, fired):
    """Router._drain_responses for the fast path's responses: every response ring (``resp``:
    pack_rings with headers) read, filed and answered (deliver_send) and released, until
    one needs Python: a queued fired list (``fired``: the fired rings' headers, which the
    general path keeps for JSON and keyed requests) or slots of the general path or retries
    attached. Returns (slots released, status, w, pos, n, ndup, nslow): for DELIVERED the
    caller finishes slots ``pos``..``pos + n`` of worker ``w`` and releases them. Starts
    at worker ``w0``."""
    got = 0
    ts = _i64(p, 21)
    for w in range(w0, resp.shape[0]):
        hdr, u8 = request_ring(resp, w)
        fhdr = carray(_voidptr(fired[w, R_HDR]), (fired[w, R_HDR_LEN],), np.int64)
        while True:
            pos, n = RK._readable(hdr, u8.shape[0])
            _, nf = RK._readable(fhdr, 1)          # after readable: covers these responses
            if nf > 0:
                return got, FIRED, w, pos, n, 0, 0
            if n <= 0:
                break
            ndup, nslow = deliver_send(h, u8, pos, n, _i64(p, 0), zmqc.monotonic_ns(ts),
                                       _i64x2(p, 1), _i64(p, 2), _i64(p, 3), _u8x2(p, 4),
                                       _u8x2(p, 5), _u16(p, 6), instrument, _i64(p, 7),
                                       _i64x2(p, 8), _i64(p, 9), _i64(p, 10), _i64(p, 11),
                                       _i64(p, 12), _i64(p, 13), _i64x2(p, 14), _u8(p, 15),
                                       window_ns, _u8x2(p, 16), _i64(p, 17), _u8(p, 18),
                                       _u8(p, 19), _i64(p, 20))
            if ndup or nslow:
                return got, DELIVERED, w, pos, n, ndup, nslow
            RK._release(hdr, n)
            got += n
    return got, DRAINED, 0, 0, 0, 0, 0
