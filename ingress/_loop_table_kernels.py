"""The compiled loop's read and drain with its batch table inside (ingress.compiledloop).

``read_packed`` is ingress._loop_kernels.read_packed plus the batch table's admission: a
binary batch the read would hand to Python is offered to the table (ingress.batchtable's
``admit``, compiled) in the same call, and only what the table declines (or a message while
shedding, a bad one, an error) comes back as HANDOFF; Python then runs the same steps on
it as before (the table is asked again: a row holding its key is moved to the general path
first), so every answer but the common one keeps its one implementation. ``drain_packed``
is ingress._loop_kernels.drain_packed plus the table's filing: slots of the general path's
requests are filed into their rows (``file_slots``, which answers a complete row) in the
same call, and only slots of a Python ``Pending`` (status TABLED) or retries attached to
fast rows (DELIVERED) come back.

Why: with both in Python, every 64-event request cost the ingress's main thread a return
to Python for its admission and another per drained run of its responses, each unboxing
about twenty arrays (docs/BENCH.md, "Where the ingress's CPU goes at 32 x 64").
"""
from __future__ import annotations

from numba import njit

from ingress import _batch_table_kernels as TK
from ingress import _loop_kernels as LK
from ingress import zmqc
from shm import _ring_kernels as RK

# drain_packed's statuses: LK's, and TABLED: as DELIVERED (ndup 0), the table's slots
# among pos..pos + n already filed (its rows answered): the rest, nslow, are Pending's
TABLED = 3
# the table's arrays, as rows of LK.pack: for the admission and for the filing
TABLE_PACK = ("bt", "tfree", "tmeta", "tenv", "trecs", "tslots", "widx", "bout")
FILE_PACK = ("bt", "tfree", "tmeta", "tenv", "tslots", "cells", "gout", "idbuf", "flag_errors",
             "c_req", "c_dec", "c_eval", "c_stage", "bounds", "dd_meta", "dd_index", "dd_ent",
             "dd_pool", "gts")
KINDS = {"bt": ("i8", 2), "tfree": ("i8", 1), "tmeta": ("i8", 1), "tenv": ("u1", 2),
         "trecs": ("u1", 2), "tslots": ("u1", 2), "widx": ("i8", 1), "bout": ("i8", 1),
         "cells": ("i8", 1), "gout": ("u1", 1), "idbuf": ("u1", 1), "flag_errors": ("u2", 1),
         "c_req": ("i8", 1), "c_dec": ("i8", 1), "c_eval": ("i8", 1), "c_stage": ("i8", 2),
         "bounds": ("i8", 1), "dd_meta": ("i8", 1), "dd_index": ("i8", 1), "dd_ent": ("i8", 2),
         "dd_pool": ("u1", 1), "gts": ("i8", 1)}


@njit(cache=True)
def read_packed(h, p, tp, rings, limit, owed_since, dd_pool_size, py_keyed):
    """LK.read_packed (``p``: LK.READ_PACK), whose HANDOFF of a binary batch is first offered
    to the table (``tp``: TABLE_PACK); ``py_keyed``: keyed requests in flight on the general
    path. Returns (messages admitted, status, frames, t, owed_since): LK.read_batch's, and
    the first admission whose doorbell is deferred (RING when that is DEFER_NS old)."""
    msg, buf, fsize, ts, state, conf = (LK._i64(p, 0), LK._u8(p, 1), LK._i64(p, 2), LK._i64(p, 3),
                                        LK._i64(p, 4), LK._i64(p, 5))
    checks, dd_index, dd_ent = LK._i64x2(p, 6), LK._i64(p, 7), LK._i64x2(p, 8)
    ft, meta, cells, owed, own = LK._i64x2(p, 9), LK._i64(p, 11), LK._i64(p, 13), LK._u8(p, 18), LK._i64(p, 20)
    bt, tfree, tmeta = LK._i64x2(tp, 0), LK._i64(tp, 1), LK._i64(tp, 2)
    tenv, trecs, tslots = LK._u8x2(tp, 3), LK._u8x2(tp, 4), LK._u8x2(tp, 5)
    widx, bout = LK._i64(tp, 6), LK._i64(tp, 7)
    n = 0
    since = owed_since
    while True:
        conf[LK.GENERAL_KEYED] = py_keyed + tmeta[TK.M_KEYED]     # keys held elsewhere
        got, status, k, t = LK.read_packed(h, p, rings, limit - n, since, dd_pool_size)
        n += got
        if status != LK.HANDOFF or (t - state[LK.BACKLOG_SINCE] > conf[LK.SHED_AFTER_NS]
                                    and state[LK.BACKLOG_READS] > conf[LK.READ_BATCH]):
            return n, status, k, t, since          # (shedding: the router judges the peer)
        row = TK.admit(buf, fsize, k, t, py_keyed, conf, cells, checks, dd_index, dd_ent,
                       dd_pool_size, ft, meta, rings, widx, bout, own, ts, msg, owed, bt, tfree,
                       tmeta, tenv, trecs, tslots)
        if row < 0:
            return n, status, k, t, since
        n += 1
        if since == 0:
            since = t
        if t - since > conf[LK.DEFER_NS]:
            return n, LK.RING, 0, t, since


@njit(cache=True)
def drain_packed(h, w0, instrument, window_ns, p, resp, fired, fp, g_instrument, g_window_ns):
    """LK.drain_packed (``p``: LK.DELIVER_PACK), whose slots of the general path are filed
    into the table's rows (``fp``: FILE_PACK; ``g_instrument``, ``g_window_ns``: the general
    path's) and released when no Python ``Pending`` holds one. Returns LK.drain_packed's
    tuple; TABLED for slots left to the general path's Python (nslow of them)."""
    bt, tfree, tmeta, tenv, tslots = (LK._i64x2(fp, 0), LK._i64(fp, 1), LK._i64(fp, 2),
                                      LK._u8x2(fp, 3), LK._u8x2(fp, 4))
    cells, gout, idbuf, flag_errors = LK._i64(fp, 5), LK._u8(fp, 6), LK._u8(fp, 7), LK._u16(fp, 8)
    c_req, c_dec, c_eval, c_stage = LK._i64(fp, 9), LK._i64(fp, 10), LK._i64(fp, 11), LK._i64x2(fp, 12)
    bounds, dd_meta, dd_index, dd_ent = LK._i64(fp, 13), LK._i64(fp, 14), LK._i64(fp, 15), LK._i64x2(fp, 16)
    dd_pool, gts = LK._u8(fp, 17), LK._i64(fp, 18)
    got = 0
    w = w0
    while True:
        n_rel, status, w, pos, n, ndup, nslow = LK.drain_packed(h, w, instrument, window_ns, p,
                                                                resp, fired)
        got += n_rel
        if status != LK.DELIVERED or ndup:
            return got, status, w, pos, n, ndup, nslow
        hdr, u8 = LK.request_ring(resp, w)
        rest = TK.file_slots(h, u8, pos, n, zmqc.monotonic_ns(gts), bt, tfree, tmeta, tenv,
                             tslots, cells, gout, idbuf, flag_errors, c_req, g_instrument, c_dec,
                             c_eval, c_stage, bounds, dd_meta, dd_index, dd_ent, dd_pool,
                             g_window_ns, gts)
        if rest:
            return got, TABLED, w, pos, n, 0, rest
        RK._release(hdr, n)
        got += n
