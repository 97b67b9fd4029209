"""Compiled parts of the idempotency window (ingress.dedup): a FIFO of decided requests in
preallocated arrays, a linear-probing hash index over it, and a byte pool holding each
request's response slots. Nothing is allocated per request, so the window's memory is fixed
at start (a dict of Python objects kept growing as it churned: +46 MiB of ingress RSS in a
10-minute soak, docs/RELIABILITY.md).

Entries are rows of one int64 table ``ent`` (C x ENT_WORDS: the key's two u64 halves as bit
patterns, expiry, event count, pool start, index slot, hash of the request's record bytes),
so a call passes few arrays. A key found with another record hash (or count) is a conflict:
the same idempotency key reused for other events.
Coordinates: an entry's *position* is a monotonic counter; its row is ``position & (C-1)``.
Live entries are positions [tail, head). Pool bytes are addressed by a monotonic byte counter
too; an entry's bytes are [start, start + nbytes), stored at ``start % P`` and never split
across the pool's end. The live entries' bytes span [start[tail], pool_head), at most P long,
so no two live entries overlap in the pool.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ingress._bytes_kernels import copy_bytes

# meta words
HEAD, TAIL, POOL_HEAD, EVICTED_EARLY = 0, 1, 2, 3
META_WORDS = 4
CID, RID, EXP, N, START, HSLOT, RHASH = 0, 1, 2, 3, 4, 5, 6     # columns of ent
ENT_WORDS = 7
CONFLICT = -2                  # lookup: the key was decided for other events


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0xBF58476D1CE4E5B9)
_A = np.uint64(0x632BE59BD9B4E019)
_S29, _S32 = np.uint64(29), np.uint64(32)
_LOW62 = np.uint64((1 << 62) - 1)


@njit(cache=True, inline="always")
def _hash(cid, rid):
    """A non-negative int64 mixing both 64-bit halves of the key (uint64 throughout: numba
    would promote a uint64/int64 mix to float)."""
    h = (np.uint64(cid) * _M1) ^ ((np.uint64(rid) + _A) * _M2)
    h ^= h >> _S29
    h *= _M3
    h ^= h >> _S32
    return np.int64(h & _LOW62)


@njit(cache=True)
def records_hash(buf, off, nbytes, fmask):
    """64-bit hash (int64 bit pattern) of the ``nbytes`` of whole records in ``buf`` (bytes or
    a uint8 array) from ``off``: the request's event records, to tell a retry from a reused
    key. ``fmask``: one record's field mask as int64 words (all ones on its fields' bytes,
    zero on its padding: shm.journal_append.field_mask), applied word by word: padding is
    not hashed. The engine ignores padding (docs/PROTOCOL.md) and the journal stores it as
    zeros, so a window rebuilt from journal records (ingress.window_feed) must hash the same
    value as the ingress did for the bytes the client sent, whatever their padding held.
    Eight bytes per step (about 2 ns each here); not cryptographic: a collision only lets a
    client's own reused key be answered with its own earlier decision."""
    h = (np.uint64(nbytes) + _A) * _M1
    src = buf[off:off + nbytes]            # indexed from 0 by range counters: no per-byte
    j = 0                                  # negative-index check (ingress._bytes_kernels)
    nw = fmask.shape[0]
    for q in range(nbytes // 8):
        w = np.uint64(0)
        for b in range(8):
            w |= np.uint64(src[q * 8 + b]) << np.uint64(8 * b)
        w &= np.uint64(fmask[j])
        j = j + 1 if j + 1 < nw else 0
        h = (h ^ (w * _M2)) * _M3
        h ^= h >> _S29
    k = nbytes // 8 * 8
    w = np.uint64(0)
    for b in range(nbytes - k):
        w |= np.uint64(src[k + b]) << np.uint64(8 * b)
    h = (h ^ (w * _M2)) * _M1
    h ^= h >> _S32
    h *= _M3
    h ^= h >> _S29
    return np.int64(h)


@njit(cache=True)
def _find(index, ent, cid, rid):
    """(position, index slot) of the key (int64 bit patterns), or (-1, the empty index slot
    where it would go)."""
    mask = index.size - 1
    cmask = ent.shape[0] - 1
    i = _hash(cid, rid) & mask
    while True:
        p = index[i]
        if p < 0:
            return -1, i
        s = p & cmask
        if ent[s, CID] == cid and ent[s, RID] == rid:
            return p, i
        i = (i + 1) & mask


@njit(cache=True)
def _unindex(index, ent, i):
    """Empty index slot ``i`` and shift later members of its probe run back (no tombstones)."""
    mask = index.size - 1
    cmask = ent.shape[0] - 1
    index[i] = -1
    j = i
    while True:
        j = (j + 1) & mask
        p = index[j]
        if p < 0:
            return
        s = p & cmask
        home = _hash(ent[s, CID], ent[s, RID]) & mask
        if ((j - home) & mask) >= ((j - i) & mask):     # the hole lies on p's probe path
            index[i] = p
            ent[s, HSLOT] = i
            index[j] = -1
            i = j


@njit(cache=True)
def _evict_oldest(meta, index, ent):
    t = meta[TAIL]
    s = t & (ent.shape[0] - 1)
    if ent[s, HSLOT] >= 0:
        _unindex(index, ent, ent[s, HSLOT])
        ent[s, HSLOT] = -1
    meta[TAIL] = t + 1


@njit(cache=True)
def lookup(index, ent, pool_size, cid, rid, now, n, rhash):
    """Pool byte offset of the decided request (cid, rid) with ``n`` events hashing to
    ``rhash`` (records_hash), -1 when it is unknown or expired, CONFLICT when it was decided
    for other events. ``cid``/``rid``: u64 values as int64 bit patterns."""
    p, _ = _find(index, ent, cid, rid)
    if p < 0:
        return -1
    s = p & (ent.shape[0] - 1)
    if ent[s, EXP] <= now:
        return -1
    if ent[s, N] != n or ent[s, RHASH] != rhash:
        return CONFLICT
    return ent[s, START] % pool_size


@njit(cache=True)
def insert(meta, index, ent, pool, cid, rid, exp, now, data, rhash):
    """Remember ``data`` (the response slots' bytes, 64 per event) of the request whose
    records hash to ``rhash`` for (cid, rid) until ``exp``. Expired entries go first; then the oldest go while the entries or the pool are
    full (counted in meta[EVICTED_EARLY]: the window is too small for the traffic). Returns
    False when ``data`` is larger than the whole pool (not remembered)."""
    nbytes = data.size
    psize = pool.size
    if nbytes > psize:
        return False
    cap = ent.shape[0]
    while meta[HEAD] > meta[TAIL] and ent[meta[TAIL] & (cap - 1), EXP] <= now:
        _evict_oldest(meta, index, ent)
    p, i = _find(index, ent, cid, rid)
    if p >= 0:                                 # a key decided again: only the newest counts
        _unindex(index, ent, i)
        ent[p & (cap - 1), HSLOT] = -1
    start = meta[POOL_HEAD]
    off = start % psize
    if off + nbytes > psize:                   # never split across the pool's end
        start += psize - off
        off = 0
    end = start + nbytes
    while meta[HEAD] > meta[TAIL] and (meta[HEAD] - meta[TAIL] >= cap
                                       or end - ent[meta[TAIL] & (cap - 1), START] > psize):
        _evict_oldest(meta, index, ent)
        meta[EVICTED_EARLY] += 1
    h = meta[HEAD]
    s = h & (cap - 1)
    ent[s, CID] = cid
    ent[s, RID] = rid
    ent[s, EXP] = exp
    ent[s, N] = nbytes // 64
    ent[s, START] = start
    ent[s, RHASH] = rhash
    copy_bytes(pool, off, data, 0, nbytes)
    _, i = _find(index, ent, cid, rid)
    index[i] = h
    ent[s, HSLOT] = i
    meta[HEAD] = h + 1
    meta[POOL_HEAD] = end
    return True
