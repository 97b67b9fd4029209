"""The compiled loop's in-flight table of binary batches (ingress.batchtable), compiled.

A binary batch the compiled read hands back (ingress._loop_kernels.read_batch) is offered to
``admit``: the same header checks as the general path's decoder, then the compiled batch
admission (ingress._batch_admit_kernels.admit_batch: values, key, workers, rings), and the
request is kept in a preallocated row (connection, ids, deadline, records, result slots)
instead of a Python ``Pending``. ``file_slots`` files drained response slots into their rows
and, when a row's last event is decided, sends its reply in the same call
(_batch_kernels.finish_send). Anything else declines with nothing changed; a message whose
idempotency key a row holds returns that row, for Python to move it to the general path
first (``evict``), so retries, fired lists, block_source and deadlines keep one
implementation there.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ingress import _batch_admit_kernels as BA
from ingress import _batch_kernels as BK
from ingress import _fast_kernels as FK
from ingress import _loop_kernels as LK
from ingress import zmqc
from ingress._bytes_kernels import copy_bytes, zero_bytes
from ingress.admission import INFLIGHT, SEQ
from shm.tokens import INDEX_BITS, general_seq, is_fast, token_index

# table columns (``bt``, int64), the fast path's table's first (T_SEQ 0 = a free row), so
# its deadline scan serves both (FK.expired); T_WMASK: bit w set = events on worker w
(T_SEQ, T_ARRIVAL, T_ROUTED, T_FIRST, T_DEADLINE, T_WMASK, T_CID, T_RID, T_KEYED,
 T_RHASH) = (FK.SEQ, FK.ARRIVAL, FK.ROUTED, FK.FIRST, FK.DEADLINE, FK.WORKER, FK.CID, FK.RID,
             FK.KEYED, FK.RHASH)
T_N, T_REMAIN, T_ENVLEN, T_DELIM, T_PEER0, T_PEER1, T_DEADLINE_US, T_FLAGS = range(FK.FT_WORDS, FK.FT_WORDS + 8)
T_COLS = FK.FT_WORDS + 8
# ``tmeta`` cells: the fast path's (free-stack top, rows used, a lower bound of the
# deadlines, HIGH = every row), then keyed rows, the per-event deadline
# (Admission.deadline), the events a row has room for, the record size
M_TOP, M_USED, M_MIN_DEADLINE, M_HIGH = FK.TOP, FK.USED, FK.MIN_DEADLINE, FK.HIGH
M_KEYED, M_PER_EVENT_NS, M_MAX_N, M_RSIZE = range(FK.META_WORDS, FK.META_WORDS + 4)
META_WORDS = FK.META_WORDS + 4
NO_DEADLINE = FK.NO_DEADLINE
DECLINED = -1                    # admit: Python takes it; <= -2: row -2 - r holds its key
SLOT = FK.SLOT_BYTES


@njit(cache=True)
def seq_row(bt, seq):
    """The row in flight of request sequence ``seq``, or -1."""
    for row in range(bt.shape[0]):
        if bt[row, T_SEQ] == seq:
            return row
    return -1


@njit(cache=True)
def peer_count(bt, tenv, ident, n):
    """Rows in flight of the connection whose identity is ``ident[:n]``."""
    c = 0
    for row in range(bt.shape[0]):
        if bt[row, T_SEQ] != 0 and bt[row, T_ENVLEN] == n and LK.same_identity(tenv[row], ident, n):
            c += 1
    return c


@njit(cache=True)
def admit(buf, fsize, nframes, now, py_keyed, conf, cells, checks, dd_index, dd_ent, dd_pool_size,
          ft, meta, rings, widx, out, own, ts, msg, owed, bt, tfree, tmeta, tenv, trecs, tslots):
    """Admit the message in ``buf`` (frames as read_batch leaves them) into a free row: its
    row (>= 0; ``owed[w]`` set for a worker owed a doorbell), DECLINED, or -2 - row when row
    holds its idempotency key. ``py_keyed``: keyed requests in flight on the general path
    (then a keyed batch declines: Python judges its key)."""
    bo = LK.body_offset(fsize, nframes, conf[LK.FRAME_CAP])
    if bo < 0:
        return DECLINED
    size = fsize[nframes - 1]
    if size < LK.HDR or fsize[0] >= LK.ID_BYTES:
        return DECLINED
    if FK._get(buf, bo + LK.H_MAGIC, 4) != LK.REQUEST_MAGIC \
            or FK._get(buf, bo + LK.H_VERSION, 2) != LK.PROTOCOL_VERSION \
            or np.int64(FK._get(buf, bo + LK.H_SHASH, 8)) != conf[LK.SHASH] \
            or FK._get(buf, bo + LK.H_FLAGS, 2) & LK.UNKNOWN_FLAGS:
        return DECLINED
    n = np.int64(FK._get(buf, bo + LK.H_COUNT, 4))
    rsize = conf[LK.RSIZE]
    if n < 1 or size != LK.HDR + n * rsize:
        return DECLINED
    cid = np.int64(FK._get(buf, bo + LK.H_CID, 8))
    rid = np.int64(FK._get(buf, bo + LK.H_RID, 8))
    keyed = 1 if cid != 0 and conf[LK.KEYED_OK] else 0
    if keyed and tmeta[M_KEYED]:
        row = LK.key_row(bt, tmeta, cid, rid)       # (the fast table's layout)
        if row >= 0:
            return -2 - row
    if n < 2 or n > tmeta[M_MAX_N] or tmeta[M_TOP] == 0 or (keyed and py_keyed):
        return DECLINED
    inflight = cells[INFLIGHT]
    if inflight >= conf[LK.MAX_INFLIGHT] or inflight >= conf[LK.MAX_PER_PEER]:
        return DECLINED                            # Python judges the limits exactly
    body = buf[bo:bo + size]
    seq = cells[SEQ]
    if BA.admit_batch(body, n, keyed, cid, rid, seq << INDEX_BITS, now, conf, checks, dd_index,
                      dd_ent, dd_pool_size, ft, meta, rings, widx, out, own, ts) != BA.ADMITTED:
        return DECLINED
    cells[SEQ] = seq + 1
    cells[INFLIGHT] += 1
    nw = conf[LK.N_WORKERS]
    wmask = np.int64(0)
    for w in range(nw):
        if out[1 + w]:
            wmask |= np.int64(1) << w
        if out[1 + nw + w] > 0:
            owed[w] = 1
    tmeta[M_TOP] -= 1
    row = tfree[tmeta[M_TOP]]
    dus = np.int64(FK._get(buf, bo + LK.H_DEADLINE, 4))
    deadline = now + dus * 1000 if dus else now + conf[LK.DEADLINE_NS] + (n - 1) * tmeta[M_PER_EVENT_NS]
    r = bt[row]
    r[T_SEQ], r[T_N], r[T_REMAIN], r[T_ARRIVAL], r[T_DEADLINE] = seq, n, n, now, deadline
    r[T_FIRST], r[T_KEYED], r[T_CID], r[T_RID], r[T_RHASH] = 0, keyed, cid, rid, out[BA.RHASH]
    r[T_WMASK], r[T_DEADLINE_US], r[T_FLAGS] = wmask, dus, FK._get(buf, bo + LK.H_FLAGS, 2)
    r[T_ENVLEN], r[T_DELIM] = fsize[0], 1 if nframes == 3 else 0
    if msg[zmqc.CAPTURE]:                          # its sender, while block_source captures
        r[T_PEER0], r[T_PEER1] = msg[zmqc.PEER], msg[zmqc.PEER + 1]
    else:
        r[T_PEER0], r[T_PEER1] = 0, 0
    for k in range(fsize[0]):
        tenv[row, k] = buf[k]
    copy_bytes(trecs[row], 0, body, LK.HDR, n * rsize)
    zero_bytes(tslots[row], 0, n * SLOT)           # generation 0: no decision yet
    tmeta[M_USED] += 1
    tmeta[M_KEYED] += keyed
    if deadline < tmeta[M_MIN_DEADLINE]:
        tmeta[M_MIN_DEADLINE] = deadline
    r[T_ROUTED] = zmqc.monotonic_ns(ts)
    return row


@njit(cache=True)
def free_row(row, bt, tfree, tmeta):
    """Row ``row`` answered (or moved to the general path: ``evict``) is free."""
    tmeta[M_KEYED] -= bt[row, T_KEYED]
    bt[row, T_SEQ] = 0
    tfree[tmeta[M_TOP]] = row
    tmeta[M_TOP] += 1
    tmeta[M_USED] -= 1


@njit(cache=True)
def file_slots(h, resp_u8, pos, n, now, bt, tfree, tmeta, tenv, tslots, cells, out, idbuf,
               flag_errors, c_req, instrument, c_dec, c_eval, c_stage, bounds, dd_meta, dd_index,
               dd_ent, dd_pool, window_ns, ts):
    """File the ``n`` drained response slots of a worker from position ``pos`` that belong
    to rows (as GeneralPath.deliver: a decided event keeps its first decision) and answer
    each row whose last event is decided, as GeneralPath._finish_compiled does. Returns the
    slots of the general path's ``Pending`` requests (neither the fast path's nor a row's)."""
    mask = resp_u8.shape[0] - 1
    rest = 0
    row, cur = -1, np.int64(-1)
    for j in range(n):
        s = resp_u8[(pos + j) & mask]
        tok = FK._get(s, FK.S_TOKEN, 8)
        if is_fast(tok):
            continue
        seq = general_seq(tok)
        if seq != cur:
            cur = seq
            row = seq_row(bt, seq) if tmeta[M_USED] else -1
        if row < 0 or bt[row, T_SEQ] != seq:       # (a row answered above is free now)
            rest += 1
            continue
        r = bt[row]
        if not r[T_FIRST]:
            r[T_FIRST] = now
        i = token_index(tok)
        if i >= r[T_N]:
            continue
        d = tslots[row, i * SLOT:(i + 1) * SLOT]
        if FK._get(d, FK.S_GEN, 4) != 0:
            continue
        copy_bytes(d, 0, s, 0, SLOT)
        r[T_REMAIN] -= 1
        if r[T_REMAIN] > 0:
            continue
        m = r[T_N]
        BK.finish_send(h, tenv[row, :r[T_ENVLEN]], r[T_DELIM], tslots[row, :m * SLOT].reshape(m, SLOT),
                       out, idbuf, r[T_RID], flag_errors, 0, c_req, instrument, c_dec, c_eval,
                       c_stage, bounds, r[T_ARRIVAL], r[T_ROUTED], r[T_FIRST], r[T_KEYED],
                       r[T_CID], r[T_RHASH], dd_meta, dd_index, dd_ent, dd_pool, window_ns, ts)
        free_row(row, bt, tfree, tmeta)
        cells[INFLIGHT] -= 1
    return rest
