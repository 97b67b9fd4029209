"""The router's read loop compiled (``ingress.compiled_loop: true``): no Python per fast request.

``CompiledLoop.read`` replaces Router._read_requests. One compiled call
(ingress._loop_kernels.read_batch) receives messages from the ROUTER socket through libzmq
(ingress.zmqc) and admits the fast path's requests (binary, one event) into the rings; the
fast path's ``deliver`` then sends their replies from compiled code too (FastPath.compiled).
What the compiled call declines (JSON, batches, bad frames or values, retries, anything over
a limit or while shedding) it hands back with its frames, and this runs the router's
per-message code on it, unchanged: one implementation of every answer but the common one.
A binary batch is offered to the batch table (ingress.batchtable) inside the same read call
(ingress._loop_table_kernels): it is admitted into the rings and a preallocated row, and the
compiled drain files its responses and answers it, with no Python per request; what the
table declines is handed back and takes the router's path, where one compiled call admits a
binary batch as well (ingress.batchadmit).

pyzmq still creates, configures (CURVE included: libzmq applies it) and closes the socket;
the handle is taken from it (zmqc.handle) at every call, so a closed socket is never used.
"""
from __future__ import annotations

import time

import numba
import numpy as np
import zmq

from shm.control import OVERLOAD_REASONS
from ingress import _loop_kernels as LK
from ingress import _loop_table_kernels as LTK
from ingress import zmqc
from ingress.admission import DOORBELL_DEFER_NS
from ingress.batchadmit import BatchAdmit
from ingress.batchtable import BatchTable
from ingress.dedup import i64_bits
from ingress.idlewait import CompiledIdle
from shm import _ring_kernels as RK
from shm.ring import bind_entry

_SHED = OVERLOAD_REASONS.index("shed")


class CompiledLoop:
    py_messages = np.zeros(1, np.int64)  # the router's ingress.py_messages cell, once set

    def __init__(self, cfg, rings, fast, general, admission, shards, views, dedup,
                 read_batch: int, shed_after_ns: int):
        """The router's parts it drives (``rings``: its EngineRings per worker);
        ``read_batch`` and ``shed_after_ns``: the router's READ_BATCH and SHED_AFTER_NS."""
        self.fast, self.general, self.admission, self.views, self.dedup = fast, general, admission, views, dedup
        self.read_batch = read_batch
        self.shed_after_ns = shed_after_ns
        ing = cfg.ingress
        self.frame_cap = 2 * ing.max_frame_bytes + 4096       # ZMQ_MAXMSGSIZE (router._socket)
        self.buf = np.zeros(LK.MAX_FRAMES * self.frame_cap, np.uint8)
        self.fsize = np.zeros(LK.MAX_FRAMES, np.int64)
        self.msg, self.ts = zmqc.new_msg(), np.zeros(2, np.int64)
        self.state = np.zeros(LK.STATE_WORDS, np.int64)
        self.owed = np.zeros(len(views.ring_hdr), np.uint8)
        c = self.conf = np.zeros(LK.FMASK + fast.rsize // 8, np.int64)
        key_dt, key_off = cfg.schema.dtype.fields[shards.key][:2]
        for i, v in ((LK.BODY_LEN, fast.body_len), (LK.RSIZE, fast.rsize),
                     (LK.SHASH, i64_bits(fast.schema_hash)), (LK.KEYED_OK, int(fast.keyed_ok)),
                     (LK.MAX_INFLIGHT, admission.max_inflight), (LK.MAX_PER_PEER, admission.max_per_peer),
                     (LK.N_WORKERS, shards.n_workers), (LK.SHARD_OFF, key_off),
                     (LK.SHARD_WIDTH, key_dt.itemsize), (LK.SHARD_SIGNED, int(key_dt.kind == "i")),
                     (LK.EV_OFF, views.ev_off), (LK.BEHIND_NS, admission.behind_ns),
                     (LK.DEADLINE_NS, admission.default_deadline_ns), (LK.FRAME_CAP, self.frame_cap),
                     (LK.SHED_AFTER_NS, shed_after_ns), (LK.READ_BATCH, read_batch),
                     (LK.DEFER_NS, DOORBELL_DEFER_NS), (LK.PARTITIONED, int(fast.owners is not None))):
            c[i] = v
        c[LK.FMASK:] = fast.fmask
        # a cluster node's lease deadlines (ingress.ownercheck); else a cell never read
        self.own = fast.owners.until_ns() if fast.owners is not None else np.zeros(1, np.int64)
        arrays = dict(msg=self.msg, buf=self.buf, fsize=self.fsize, ts=self.ts, state=self.state,
                      conf=c, checks=fast.checks, dd_index=fast.dd_index, dd_ent=fast.dd_ent,
                      ft=fast.ft, free=fast.free, meta=fast.meta, fdec=fast.fdec,
                      cells=admission.cells, env_id=fast.env_id, env_len=fast.env_len,
                      env_delim=fast.env_delim, dup=fast.dup, owed=self.owed,
                      peer=fast.peer.view(np.int64), own=self.own)
        self.pack = LK.pack(arrays, LK.READ_PACK)        # one argument, not 19 (LK doc)
        self.rings = LK.pack_rings(views.ring_hdr, views.ring_u8)
        # the general path's binary batches: admitted in one compiled call (ingress.batchadmit)
        general.batch = BatchAdmit(general.codec, dedup, admission, views, fast, c, self.rings,
                                   self.own)
        # binary batches kept in flight in compiled code (ingress.batchtable)
        self.table = general.table = BatchTable(self, general, admission)
        admission.peer_extra = lambda peer: fast.peer_count(peer) + self.table.peer_count(peer)
        self.dd_pool_size = fast.dd_pool.size
        ty, i64 = numba.typeof, numba.types.int64
        tp = self.table.read_pack                 # the table's admission inside the read
        self._read = bind_entry(LTK.read_packed, (i64, ty(self.pack), ty(tp), ty(self.rings))
                                + (i64,) * 4)
        # the response and fired rings, for drain_packed
        self.response_rings = [r.response for r in rings]
        self.resp = LK.pack_rings([q.header for q in self.response_rings], views.resp_u8)
        self.fired = LK.pack_rings([r.fired.header for r in rings], views.resp_u8)
        self._drain = bind_entry(LTK.drain_packed, (i64,) * 4 + (ty(fast._dpack), ty(self.resp),
                                                                 ty(self.fired), ty(tp), i64, i64))
        self._release = bind_entry(RK._release, (ty(self.response_rings[0].header), i64))
        self.idle = CompiledIdle(self.resp)      # the router's idle wait (ingress.idlewait)

    def read(self, sock: zmq.Socket, router) -> int:
        """Router._read_requests, compiled (module doc); returns the messages read."""
        h = zmqc.handle(sock)
        views, state, budget = self.views, self.state, self.read_batch
        fast, general, table = self.fast, self.general, self.table
        n, inflight, tp = 0, self.dedup.inflight, table.read_pack
        while n < budget:
            got, status, k, t, views.owed_since = self._read(
                h, self.pack, tp, self.rings, budget - n, views.owed_since, self.dd_pool_size,
                len(inflight))                     # (its keys held in Python: LTK.read_packed)
            n += got
            self._flush_owed()
            if status == LK.EMPTY or status == LK.FULL:
                break
            if status == LK.RING:
                views.ring_owed()
                continue
            if status == LK.ERROR:
                raise zmq.ZMQError(k)
            self.py_messages[0] += 1               # HANDOFF, TOO_MANY: Python's from here
            shedding = t - state[LK.BACKLOG_SINCE] > self.shed_after_ns and state[LK.BACKLOG_READS] > budget
            if status == LK.HANDOFF and not shedding and table.admit(k, t):   # a batch, kept
                n += 1
                self._flush_owed()
                views.owed_since = views.owed_since or t
                if t - views.owed_since > DOORBELL_DEFER_NS:
                    views.ring_owed()
                continue
            frames = self._frames(k)
            # its sender, for the Python paths' blocks: read only while captured (block_source)
            fast.peer_now = zmqc.peer_of(self.msg) if self.msg[zmqc.CAPTURE] else 0
            if status == LK.TOO_MANY:
                router._too_many_frames(frames)        # refused for its frame count: let the
                t = time.monotonic_ns()                # loop close its connection
                self._backlog(t)
                n = budget
            elif shedding and router._over_share(frames[0], t):
                router.c_overloaded[_SHED] += 1
                router.replies.shed(frames)
            elif not fast.admit(frames, t):
                general.handle(frames, t)
            n += 1
            if views.owed_since and t - views.owed_since > DOORBELL_DEFER_NS:
                views.ring_owed()
        views.ring_owed()                          # when the queue empties, or every call
        return n

    def drain(self, router) -> int:
        """Router._drain_responses, compiled for the fast path's responses and the batch
        table's (LTK.drain_packed); the general path's Pending, fired lists and retries in
        Python. Returns the slots drained."""
        fast, general, fp = self.fast, self.general, self.table.file_pack
        gi, gw = int(general.instrument), general.dedup.window_ns
        got, w0 = 0, 0
        while True:
            n_rel, status, w, pos, n, ndup, nslow = self._drain(
                fast.h, w0, fast.instrument, fast.window_ns, fast._dpack, self.resp, self.fired,
                fp, gi, gw)
            got += n_rel
            if status == LK.DRAINED:
                return got
            if status == LK.FIRED:                 # this ring the Python way, to its end
                got += router._drain_ring(w, self.response_rings[w])
                w0 = w + 1
                continue
            for row in fast.done[:ndup].tolist():  # DELIVERED: the rest of these slots
                fast._reply_duplicates(row)
            if nslow:                              # TABLED: the table's rows are filed
                general.deliver(w, pos, n, tabled=status == LTK.TABLED)
            self._release(self.response_rings[w].header, n)
            got += n
            w0 = w

    def _frames(self, k: int) -> list:
        cap, buf = self.frame_cap, self.buf
        return [buf[j * cap:j * cap + s].tobytes() for j, s in enumerate(self.fsize[:k].tolist())]

    def _backlog(self, t: int) -> None:
        """The router's backlog bookkeeping for a message read in Python."""
        s = self.state
        if not s[LK.BACKLOG_SINCE]:
            s[LK.BACKLOG_SINCE], s[LK.BACKLOG_READS] = t, 0
        s[LK.BACKLOG_READS] += 1

    def _flush_owed(self) -> None:
        """The doorbells the compiled admits owe, to the ring views that ring them."""
        owed = self.owed
        for w in range(len(owed)):
            if owed[w]:
                owed[w] = 0
                self.views.owe(w)
