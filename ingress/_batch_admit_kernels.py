"""The general path's admission of a binary batch in one compiled call (ingress.generalpath).

A 64-event request cost the ingress's main thread about 100 us of Python before its events
reached the rings (cProfile, 32 clients x 64 events: decode and its staging copy, the
records' hash, the window look-up, the shard split, a worker check and a ring write per
worker, each a separate call). ``admit_batch`` does that work for a request whose header
Python checked: every record's values, the idempotency key (not in flight on the fast path,
not decided), every event's worker, every worker's room and progress, then the records into
the rings, one claim and one publish per worker. It changes nothing unless it admits: any
other answer (a bad value, a retry, a refusal) declines, and the general path's Python
handles the request from the start, so errors, retries and refusals keep one implementation.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ingress import _dedup_kernels as DK
from ingress import _fast_kernels as FK
from ingress import _loop_kernels as LK
from ingress import _owner_kernels as OK
from shm import _ring_kernels as RK

# admit_batch results (>= 0: admitted)
ADMITTED, BAD_VALUE, KEY_IN_FLIGHT, DECIDED, REFUSED, FOREIGN = 0, -1, -2, -3, -4, -5
# ``out`` cells: the records' hash, then per worker its events, then 1 if it is owed a doorbell
RHASH = 0


def out_words(n_workers: int) -> int:
    """The size of admit_batch's ``out`` for ``n_workers`` workers."""
    return 1 + 2 * n_workers


@njit(cache=True)
def admit_batch(body, n, keyed, cid, rid, token0, now, conf, checks, dd_index, dd_ent,
                dd_pool_size, ft, meta, rings, widx, out, own, ts):
    """Admit the ``n`` records of binary request ``body`` (header checked by the caller;
    conf: ingress._loop_kernels' RSIZE, FMASK, EV_OFF, BEHIND_NS, N_WORKERS, SHARD_*): record i
    goes to worker ``widx[i]`` with token ``token0 + i`` (shm.tokens), arrival ``now`` and
    the request's ids ``cid``, ``rid`` (int64 bit patterns). ``keyed``: (cid, rid) is an
    idempotency key. Returns ADMITTED, with ``out`` filled (RHASH: records_hash when keyed;
    1 + w: worker w's events; 1 + N_WORKERS + w: 1 when it sleeps and is owed a doorbell),
    or, with nothing written to a ring or table: BAD_VALUE, KEY_IN_FLIGHT (a fast row holds
    the key), DECIDED (the window knows it, for these events or others), REFUSED (a worker's
    ring has no room, or it is behind: FK.worker_refusal), FOREIGN (on a cluster node,
    conf PARTITIONED: an event of a partition whose lease deadline in ``own`` has passed or
    is not this node's; the general path answers NOT_OWNER; ``ts``: two scratch cells)."""
    rsize = conf[LK.RSIZE]
    hdr = LK.HDR
    for i in range(n):                          # the codec's value checks (first_bad_record)
        if not FK.values_ok(body, hdr + i * rsize, checks):
            return BAD_VALUE
    rhash = np.int64(0)
    if keyed:
        if LK.key_row(ft, meta, cid, rid) >= 0:
            return KEY_IN_FLIGHT
        rhash = DK.records_hash(body, hdr, n * rsize, conf[LK.FMASK:])
        if DK.lookup(dd_index, dd_ent, dd_pool_size, cid, rid, now, n, rhash) != -1:
            return DECIDED
    nw = conf[LK.N_WORKERS]
    for w in range(nw):
        out[1 + w] = 0
        out[1 + nw + w] = 0
    key_off, width, signed = conf[LK.SHARD_OFF], conf[LK.SHARD_WIDTH], conf[LK.SHARD_SIGNED]
    partitioned = conf[LK.PARTITIONED]
    for i in range(n):
        h = OK.shard_hash(body, hdr + i * rsize + key_off, width, signed)
        if partitioned and not OK.owned(own, h, ts):
            return FOREIGN
        w = np.int64(h % np.uint64(nw))
        widx[i] = w
        out[1 + w] += 1
    for w in range(nw):                         # all or nothing: room in every ring first
        m = out[1 + w]
        if m:
            ring_hdr, ring_u8 = LK.request_ring(rings, w)
            if FK.worker_refusal(ring_hdr, ring_u8, rings[w, LK.R_CAP], m, now, conf[LK.BEHIND_NS]):
                return REFUSED
    ev_off = conf[LK.EV_OFF]
    for w in range(nw):
        m = out[1 + w]
        if not m:
            continue
        ring_hdr, ring_u8 = LK.request_ring(rings, w)
        cap = rings[w, LK.R_CAP]
        pos = RK._claim_position(ring_hdr, m, cap)   # room checked above: one producer
        mask = cap - 1
        j = 0
        for i in range(n):
            if widx[i] != w:
                continue
            FK.write_slot(ring_u8[(pos + j) & mask], np.uint64(token0 + i), now, cid, rid, body,
                          hdr + i * rsize, rsize, ev_off)
            j += 1
        # _publish's release store keeps the slot stores above before the new position
        out[1 + nw + w] = RK._publish(ring_hdr, pos + m)
    out[RHASH] = rhash
    return ADMITTED
