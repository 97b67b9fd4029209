"""The compiled loop's binary batches in flight: a preallocated table, no Python per request.

With ``ingress.compiled_loop`` a binary batch is offered to the table's admission
(ingress._batch_table_kernels.admit) inside the compiled read (ingress._loop_table_kernels,
through ``read_pack``; ``admit`` here for a batch handed back): it checks and admits it into
the rings (ingress._batch_admit_kernels) and keeps it in a free row; the compiled drain
files the slots of the general path into their rows (``file_pack``; ``deliver`` here) and
answers each complete row in the same call (ingress._batch_kernels.finish_send). The common
case (valid, keyed or not, no retry in flight) thus makes no ``Pending``, deadline heap
entry or window entry. Everything else stays on the general path, unchanged: what ``admit``
declines; a row whose key a later message carries, whose deadline passed, or whose event a
fired list names (JSON lists, block_source) is moved there first (``evict``: a ``Pending``
with the row's state), so retries, timeouts and fired lists keep one implementation.
"""
from __future__ import annotations

import heapq

import numba
import numpy as np

from ingress import _batch_table_kernels as TK
from ingress import _fast_kernels as FK
from ingress import _loop_kernels as LK
from ingress import _loop_table_kernels as LTK
from ingress.codec import Request
from ingress.dedup import i64_bits
from ingress.generalpath import Pending
from shm.ring import bind_entry

MAX_ROWS = 128                  # batches in flight in the table; more take the general path
MAX_EVENTS = 256                # a row's events (records and result slots); larger batches too
_U64 = (1 << 64) - 1


class BatchTable:
    def __init__(self, loop, general, admission):
        """``loop``: the CompiledLoop (its message buffer, conf, rings and fast path's
        tables); ``general``: the GeneralPath that takes what the table does not keep."""
        self.loop, self.general, self.admission = loop, general, admission
        fast, codec, ba = loop.fast, general.codec, general.batch
        rows = max(1, min(MAX_ROWS, admission.max_inflight))
        self.max_n = min(MAX_EVENTS, codec.max_batch)
        self.rsize = codec.schema.record_size
        self.dtype = codec.schema.dtype
        self.bt = np.zeros((rows, TK.T_COLS), np.int64)
        self.tfree = np.arange(rows - 1, -1, -1, dtype=np.int64)
        self.tmeta = np.zeros(TK.META_WORDS, np.int64)
        m = self.tmeta
        m[TK.M_TOP], m[TK.M_HIGH], m[TK.M_MIN_DEADLINE] = rows, rows, TK.NO_DEADLINE
        m[TK.M_PER_EVENT_NS], m[TK.M_MAX_N], m[TK.M_RSIZE] = admission.per_event_ns, self.max_n, self.rsize
        self.tenv = np.zeros((rows, LK.ID_BYTES), np.uint8)
        self.trecs = np.zeros((rows, self.max_n * self.rsize), np.uint8)
        self.tslots = np.zeros((rows, self.max_n * TK.SLOT), np.uint8)
        self.due = np.zeros(rows, np.int64)
        self.inflight = general.dedup.inflight
        ty, i64 = numba.typeof, numba.types.int64
        self._admit_args = (loop.conf, admission.cells, codec.value_checks, ba.dd_index, ba.dd_ent,
                            ba.dd_pool_size, fast.ft, fast.meta, loop.rings, ba.widx, ba.out,
                            loop.own, loop.ts, loop.msg, loop.owed, self.bt, self.tfree, self.tmeta,
                            self.tenv, self.trecs, self.tslots)
        self._admit = bind_entry(TK.admit, (ty(loop.buf), ty(loop.fsize), i64, i64, i64)
                                 + tuple(ty(a) if not isinstance(a, int) else i64 for a in self._admit_args))
        fa, dd = general._finish_args, general.dedup.tables
        self._file_args = (self.bt, self.tfree, self.tmeta, self.tenv, self.tslots, admission.cells,
                           general.out, general.idbuf, fa[0], fa[1], int(general.instrument), fa[2],
                           fa[3], fa[4], fa[5], dd[0], dd[1], dd[2], dd[3],
                           general.dedup.window_ns, general.ts)
        self._file = bind_entry(TK.file_slots, (i64, ty(general.views.resp_u8[0]), i64, i64, i64)
                                + tuple(i64 if isinstance(a, int) else ty(a) for a in self._file_args))
        # the same arrays by address, for the compiled loop's read and drain (module doc)
        self.read_pack = LK.pack(dict(bt=self.bt, tfree=self.tfree, tmeta=self.tmeta, tenv=self.tenv,
                                      trecs=self.trecs, tslots=self.tslots, widx=ba.widx, bout=ba.out),
                                 LTK.TABLE_PACK, LTK.KINDS)
        self.file_pack = LK.pack(dict(zip(LTK.FILE_PACK, (a for a in self._file_args if type(a) is not int))),
                                 LTK.FILE_PACK, LTK.KINDS)
        self._due = bind_entry(FK.expired, (ty(self.bt), ty(self.tmeta), i64, ty(self.due)))
        self._free = bind_entry(TK.free_row, (i64, ty(self.bt), ty(self.tfree), ty(self.tmeta)))
        self._peers = bind_entry(TK.peer_count, (ty(self.bt), ty(self.tenv), ty(np.zeros(1, np.uint8)), i64))

    @property
    def used(self) -> int:
        return int(self.tmeta[TK.M_USED])

    @property
    def keyed(self) -> int:
        return int(self.tmeta[TK.M_KEYED])

    def admit(self, nframes: int, now: int) -> bool:
        """Offer the loop's message of ``nframes`` frames: True when a row keeps it. A row
        holding its idempotency key is moved to the general path first (module doc)."""
        loop = self.loop
        r = self._admit(loop.buf, loop.fsize, nframes, now, len(self.inflight), *self._admit_args)
        if r >= 0:
            return True
        if r < TK.DECLINED:
            self.evict(-2 - r)
        return False

    def deliver(self, w: int, pos: int, n: int, now: int) -> int:
        """File worker ``w``'s drained slots ``pos``..``pos + n`` into their rows, answering
        the complete ones; returns the slots left for the general path's requests."""
        return self._file(self.general.fast.h, self.general.views.resp_u8[w], pos, n, now,
                          *self._file_args)

    def next_deadline(self) -> int:
        """A lower bound of the rows' deadlines (TK.NO_DEADLINE: none)."""
        return int(self.tmeta[TK.M_MIN_DEADLINE])

    def expire(self, now: int) -> None:
        """Move the rows whose deadline passed to the general path, which answers them."""
        if self.tmeta[TK.M_MIN_DEADLINE] > now:
            return
        for row in self.due[:self._due(self.bt, self.tmeta, now, self.due)].tolist():
            self.evict(row)

    def peer_count(self, peer: bytes) -> int:
        """Rows in flight of connection ``peer`` (Admission.peer_extra)."""
        return self._peers(self.bt, self.tenv, np.frombuffer(peer, np.uint8), len(peer)) if self.used else 0

    def evict_seq(self, seq: int) -> None:
        """Move the row of request ``seq``, if one holds it, to the general path."""
        if self.used:
            row = np.flatnonzero(self.bt[:, TK.T_SEQ] == seq)
            if row.size:
                self.evict(int(row[0]))

    def evict_key(self, key: tuple):
        """The general path's ``Pending`` of the row holding idempotency ``key``, or None."""
        if not self.keyed:
            return None
        cid, rid = i64_bits(key[0]), i64_bits(key[1])
        b = self.bt
        hit = np.flatnonzero((b[:, TK.T_SEQ] != 0) & (b[:, TK.T_KEYED] != 0)
                             & (b[:, TK.T_CID] == cid) & (b[:, TK.T_RID] == rid))
        return self.evict(int(hit[0])) if hit.size else None

    def evict(self, row: int):
        """Row ``row`` as the general path's ``Pending`` (its decisions so far, deadline,
        window entry and connection count, as if it had been admitted there); the row is free."""
        r = self.bt[row].tolist()
        seq, n, remain, arrival, deadline, routed, first = (r[c] for c in (
            TK.T_SEQ, TK.T_N, TK.T_REMAIN, TK.T_ARRIVAL, TK.T_DEADLINE, TK.T_ROUTED, TK.T_FIRST))
        keyed, cid, rid, rhash, wmask, envlen, delim, peer0, peer1, dus, flags = (r[c] for c in (
            TK.T_KEYED, TK.T_CID, TK.T_RID, TK.T_RHASH, TK.T_WMASK, TK.T_ENVLEN, TK.T_DELIM,
            TK.T_PEER0, TK.T_PEER1, TK.T_DEADLINE_US, TK.T_FLAGS))
        ident = self.tenv[row, :envlen].tobytes()
        envelope = [ident, b""] if delim else [ident]
        recs = self.trecs[row, :n * self.rsize].copy().view(self.dtype)
        req = Request("binary", rid & _U64, cid & _U64, dus, flags, recs)
        g = self.general
        workers = [w for w in range(g.n_workers) if wmask >> w & 1]
        key = (cid & _U64, rid & _U64) if keyed else None
        p = Pending(seq, envelope, req, n, arrival, deadline, workers, key)
        p.flat[:] = self.tslots[row, :n * TK.SLOT]
        p.remaining, p.routed_ns, p.first_resp_ns, p.rhash = remain, routed, first, rhash
        p.peer = (peer0 & _U64) << 64 | (peer1 & _U64)
        self._free(row, self.bt, self.tfree, self.tmeta)   # still in flight: counted for
        pin = self.admission.peer_inflight                  # its connection there (commit)
        pin[ident] = pin.get(ident, 0) + 1
        g.pending[seq] = p
        heapq.heappush(g.deadlines, (deadline, seq))
        if key is not None:
            g.dedup.start(key, p)
        return p
