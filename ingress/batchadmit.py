"""The compiled loop's admission of binary batches (ingress._batch_admit_kernels.admit_batch).

GeneralPath.handle offers each message to ``BatchAdmit.try_admit`` first. Per request the
Python work is one header unpack, the in-flight limits (Admission.refusal), a dict look-up
of the idempotency key on the general path, one compiled call for every event, and the
count of what was admitted; the caller then keeps the request in flight as any other.
Whatever it declines (JSON, a bad header or value, a retry, a refusal, another node's
partition) the general path decodes and answers from the start, unchanged: nothing was
written or counted for it.
"""
from __future__ import annotations

import numba
import numpy as np

from ingress import _batch_admit_kernels as BA
from ingress import _loop_kernels as LK
from ingress import wire
from ingress.admission import ADMITTED
from ingress.codec import Request
from ingress.dedup import i64_bits
from shm.ring import bind_entry
from shm.tokens import INDEX_BITS

_HEADER = wire.REQUEST_HEADER
_HDR = wire.REQUEST_HEADER_SIZE


class BatchAdmit:
    def __init__(self, codec, dedup, admission, views, fast, conf: np.ndarray, rings: np.ndarray,
                 own: np.ndarray):
        """``conf``, ``rings`` and ``own``: the compiled loop's (ingress._loop_kernels), for the
        record size, ring offsets, shard key, worker check and, on a cluster node, the lease
        deadlines (ingress.ownercheck); ``fast``: its rows hold keys too."""
        self.codec, self.dedup, self.admission, self.views, self.fast = codec, dedup, admission, views, fast
        self.conf, self.rings, self.own = conf, rings, own
        self.ts = np.zeros(2, np.int64)
        self.rsize, self.schema_hash = codec.schema.record_size, codec.schema.hash
        self.max_batch, self.max_frame_bytes = codec.max_batch, codec.max_frame_bytes
        self.n_workers = int(conf[LK.N_WORKERS])
        self.widx = np.zeros(codec.max_batch, np.int64)
        self.out = np.zeros(BA.out_words(self.n_workers), np.int64)
        _, self.dd_index, self.dd_ent, dd_pool = dedup.tables
        self.dd_pool_size = dd_pool.size
        ty, i64 = numba.typeof, numba.types.int64
        self._admit = bind_entry(BA.admit_batch, (
            ty(b"x"), i64, i64, i64, i64, i64, i64, ty(conf), ty(codec.value_checks), ty(self.dd_index),
            ty(self.dd_ent), i64, ty(fast.ft), ty(fast.meta), ty(rings), ty(self.widx), ty(self.out),
            ty(own), ty(self.ts)))

    def try_admit(self, frames: list, now_ns: int):
        """Admit a binary batch into the rings: (envelope, request, seq, workers, key,
        records hash) for the caller to keep in flight, or None (module doc)."""
        nf = len(frames)
        if nf == 3:
            if frames[1]:
                return None
            body = frames[2]
        elif nf == 2:
            body = frames[1]
        else:
            return None
        size = len(body)
        if size < _HDR or size > self.max_frame_bytes:
            return None
        magic, version, flags, shash, n, deadline_us, cid, rid = _HEADER.unpack_from(body)
        if magic != wire.REQUEST_MAGIC or version != wire.PROTOCOL_VERSION \
                or flags & ~wire.KNOWN_HEADER_FLAGS or shash != self.schema_hash \
                or not 0 < n <= self.max_batch or size != _HDR + n * self.rsize:
            return None
        adm, peer = self.admission, frames[0]
        if adm.refusal(peer) != ADMITTED:
            return None
        key = None
        if cid and self.dedup.enabled:
            key = (cid, rid)
            if key in self.dedup.inflight:
                return None
        f, out = self.fast, self.out
        if self._admit(body, n, int(key is not None), i64_bits(cid), i64_bits(rid),
                       adm.seq << INDEX_BITS, now_ns, self.conf, self.codec.value_checks,
                       self.dd_index, self.dd_ent, self.dd_pool_size, f.ft, f.meta, self.rings,
                       self.widx, out, self.own, self.ts) != BA.ADMITTED:
            return None
        seq = adm.commit(peer)
        nw, views = self.n_workers, self.views
        counts = out[1:1 + nw].tolist()
        for w, owed in enumerate(out[1 + nw:].tolist()):
            if owed > 0:
                views.owe(w)
        views.owed_since = views.owed_since or now_ns
        # the records stay the frame's bytes (immutable, kept alive by the view)
        recs = np.frombuffer(body, self.codec.schema.dtype, n, _HDR)
        req = Request("binary", rid, cid, deadline_us, flags, recs)
        return (frames[:-1], req, seq, [w for w, c in enumerate(counts) if c], key,
                int(out[BA.RHASH]))
