"""The ingress's fast path for binary requests with one event (kernels: ingress._fast_kernels).

The router offers every message to ``FastPath.admit`` first. Admitted are well-formed binary
requests with N = 1 whose idempotency key is neither in flight nor decided (on a cluster node,
of a partition it holds: ingress.ownercheck), while the admission policy (ingress.admission)
admits it and the in-flight table has room; anything else (JSON, batches, a bad header or
value, a retry, overload, another node's partition) returns False and takes the
general path (ingress.generalpath), which produces the precise error or answer. The two
paths share the admission policy and its counts, the idempotency window, the replies, the
counters and the histograms; neither reads the other's state.

Per admitted request the Python work is one header unpack, one compiled call, a list store
and the connection's in-flight count; per drained batch of responses one compiled call, then
three frame sends per reply.
"""
from __future__ import annotations

import time

import numba
import numpy as np

from shm.control import LATENCY_BOUNDS_NS, N_CODES, STAGES
from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag
from ingress import _fast_kernels as K
from ingress import _loop_kernels as LK
from ingress import wire
from ingress.admission import ADMITTED
from ingress.dedup import i64_bits, record_mask
from shm.ring import bind_entry
from shm.tokens import INDEX_SPAN

_HEADER = wire.REQUEST_HEADER

# the reply layout the kernel writes (encode_reply: header, then one decision record)
assert [wire.DECISION_DTYPE.fields[f][1] for f in ("action", "flags", "error", "nfired", "generation",
                                                   "score", "fired")] == [0, 1, 2, 4, 8, 16, 24]
assert wire.REPLY_HEADER.format == "<IHHIIQ"


class FastPath:
    owners = None                               # ingress.ownercheck.OwnerCheck on a cluster node

    def __init__(self, cfg, block, codec, dedup, admission, shards, views, replies, timeouts):
        """The fast path of one ingress: ``admission`` (ingress.admission) decides and counts
        what is in flight, ``shards`` and ``views`` route and reach the rings, ``replies``
        sends, ``timeouts`` names a late answer; ``block`` holds the counters it adds to."""
        capacity = admission.max_inflight
        if capacity > INDEX_SPAN:
            capacity = INDEX_SPAN              # the row number travels in the token (shm.tokens)
        self.admission, self.shards, self.replies, self.timeouts = admission, shards, replies, timeouts
        self.views = views
        self.capacity = capacity
        self.ft = np.zeros((capacity, K.FT_WORDS), np.int64)
        self.free = np.arange(capacity - 1, -1, -1, dtype=np.int64)   # row 0 on top
        self.meta = np.zeros(K.META_WORDS, np.int64)
        self.meta[K.TOP] = capacity
        self.meta[K.MIN_DEADLINE] = K.NO_DEADLINE
        self.fdec = np.zeros((capacity, K.SLOT_BYTES), np.uint8)
        self.fout = np.zeros((capacity, K.REPLY_BYTES), np.uint8)
        self.fout_bytes = memoryview(self.fout).cast("B")          # flat: sliced per reply
        self.done = np.zeros(capacity, np.int64)
        self.envelopes: list = [None] * capacity
        self.keys: list = [None] * capacity
        self.duplicates: dict[int, list] = {}   # row -> [(envelope, request)] retries in flight
        schema = cfg.schema
        self.body_len = wire.REQUEST_HEADER_SIZE + schema.record_size
        self.rsize = schema.record_size
        self.schema_hash = schema.hash
        self.checks = codec.value_checks
        self.fmask = record_mask(schema.dtype)   # the records hash leaves padding out (dedup)
        self.ev_off = views.ev_off
        self.dedup = dedup
        self.inflight = dedup.inflight
        self.keyed_ok = dedup.enabled
        self.window_ns = dedup.window_ns
        self.dd_meta, self.dd_index, self.dd_ent, self.dd_pool = dedup.tables
        self.ring_u8, self.ring_hdr, self.ring_cap = views.ring_u8, views.ring_hdr, views.ring_cap
        self.resp_u8 = views.resp_u8
        self.behind_ns = admission.behind_ns
        self.flag_errors = codec.flag_errors
        self.instrument = 1 if cfg.metrics.enabled else 0
        self.bounds = LATENCY_BOUNDS_NS
        self.c_eval = block.view("ingress.eval_hist").reshape(2, -1)[0]
        self.c_stage = block.view("ingress.stage_hist").reshape(len(STAGES), -1)
        self.c_req = block.view("ingress.requests").reshape(2, N_CODES)[0]
        self.c_decisions = block.view("ingress.decisions")
        # ingress.compiled_loop: a row's connection is kept in arrays the compiled loop reads
        # and writes (ingress._loop_kernels), not in ``envelopes``, ``keys`` and the dicts
        self.compiled = cfg.ingress.compiled_loop
        self.env_id = np.zeros((capacity, LK.ID_BYTES), np.uint8)
        self.env_len = np.zeros(capacity, np.int64)
        self.env_delim = np.zeros(capacity, np.uint8)
        self.dup = np.zeros(capacity, np.uint8)
        self.peer = np.zeros((capacity, 2), np.uint64)  # compiled: a row's sender, zmqc.PEER's words
        self.peers: list = [0] * capacity     # not compiled: a row's sender (ingress.autoblock)
        self.peer_now = 0                         # the sender of the message admit() is given
        self.h = 0                              # the socket's handle, once bound
        self._bind()
        if self.compiled:
            admission.peer_extra = self.peer_count

    def _bind(self) -> None:
        """Compile (or load) the kernels for exactly these argument types and keep their entry
        points: a call then skips Numba's per-call type dispatch."""
        ty = numba.typeof
        i64 = numba.types.int64
        body_t = ty(b"x")
        self._admit = bind_entry(K.admit, (
            body_t, i64, i64, ty(self.checks), ty(self.fmask), i64, i64, i64, ty(self.dd_index),
            ty(self.dd_ent), i64,
            ty(self.ring_hdr[0]), ty(self.ring_u8[0]), i64, i64, i64, ty(self.ft), ty(self.free),
            ty(self.meta), ty(self.fdec), i64, i64, i64, i64))
        # the arguments every finished row needs (K.finish_row), passed to deliver and finish
        self._tail = (self.ft, self.free, self.meta, self.fdec, self.fout, self.flag_errors,
                      self.instrument, self.c_eval, self.c_stage, self.bounds, self.c_req,
                      self.c_decisions, self.dd_meta, self.dd_index, self.dd_ent, self.dd_pool,
                      self.window_ns)
        tail_t = tuple(i64 if type(a) is int else ty(a) for a in self._tail)
        self._deliver = bind_entry(K.deliver, (ty(self.resp_u8[0]), i64, i64, ty(self.done), i64)
                                   + tail_t)
        self._finish = bind_entry(K.finish_row, (i64, i64, i64) + tail_t)
        self._expired = bind_entry(K.expired, (ty(self.ft), ty(self.meta), i64, ty(self.done)))
        if not self.compiled:
            return
        env_t = (ty(self.env_id), ty(self.env_len), ty(self.env_delim))
        self._key_row = bind_entry(LK.key_row, (ty(self.ft), ty(self.meta), i64, i64))
        self._peer_count = bind_entry(LK.peer_count, (ty(self.ft), ty(self.meta)) + env_t[:2]
                                      + (ty(self.env_id[0]), i64))
        self._send_reply = bind_entry(LK.send_reply, (i64, i64) + env_t + (ty(self.fout), ty(self.c_req)))
        arrays = dict(done=self.done, ft=self.ft, free=self.free, meta=self.meta, fdec=self.fdec,
                      fout=self.fout, flag_errors=self.flag_errors, c_eval=self.c_eval,
                      c_stage=self.c_stage, bounds=self.bounds, c_req=self.c_req,
                      c_dec=self.c_decisions, dd_meta=self.dd_meta, dd_index=self.dd_index,
                      dd_ent=self.dd_ent, dd_pool=self.dd_pool, env_id=self.env_id,
                      env_len=self.env_len, env_delim=self.env_delim, dup=self.dup,
                      cells=self.admission.cells, ts=np.zeros(2, np.int64))
        self._dpack = LK.pack(arrays, LK.DELIVER_PACK)       # one argument, not 21 (LK doc)
        self._resp = LK.pack_rings([None] * len(self.resp_u8), self.resp_u8)
        self._deliver_send = bind_entry(LK.deliver_packed, (i64,) * 7 + (ty(self._dpack), ty(self._resp)))

    def bind_socket(self, h: int) -> None:
        """Send the compiled loop's replies on the socket of handle ``h`` (ingress.zmqc)."""
        self.h = h

    def peer_count(self, peer: bytes) -> int:
        """The rows in flight of connection ``peer`` (compiled loop: Admission.peer_extra)."""
        ident = np.frombuffer(peer, np.uint8)
        if len(ident) >= LK.ID_BYTES:
            return 0
        buf = self.env_id[0].copy()
        buf[:len(ident)] = ident
        return int(self._peer_count(self.ft, self.meta, self.env_id, self.env_len, buf, len(ident)))

    def pending_row(self, key) -> int | None:
        """The row in flight with idempotency key ``key`` (compiled loop; the Python path
        keeps it in dedup.inflight), or None."""
        if not self.compiled:
            return None
        row = self._key_row(self.ft, self.meta, i64_bits(key[0]), i64_bits(key[1]))
        return None if row < 0 else int(row)

    # --- requests ----------------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return int(self.meta[K.USED])

    def admit(self, frames: list, now: int) -> bool:
        """Admit one message if it qualifies (module doc); False: the general path takes it."""
        if len(frames) == 3:
            if frames[1]:
                return False
            body = frames[2]
        elif len(frames) == 2:
            body = frames[1]
        else:
            return False
        if len(body) != self.body_len:
            return False
        magic, version, flags, shash, count, deadline_us, cid, rid = _HEADER.unpack_from(body)
        if magic != wire.REQUEST_MAGIC or version != wire.PROTOCOL_VERSION or count != 1 \
                or shash != self.schema_hash or flags & ~wire.KNOWN_HEADER_FLAGS:
            return False
        if self.owners is not None and not self.owners.record_owned(body, wire.REQUEST_HEADER_SIZE):
            return False                        # another node's partition: NOT_OWNER (general path)
        adm, peer = self.admission, frames[0]
        if adm.refusal(peer) != ADMITTED:         # the general path refuses it, reason named
            return False
        key = None
        if cid and self.keyed_ok:
            key = (cid, rid)
            if key in self.inflight or (self.compiled and self.pending_row(key) is not None):
                return False
        w = self.shards.worker_of_record(body, wire.REQUEST_HEADER_SIZE)
        res = self._admit(body, wire.REQUEST_HEADER_SIZE, self.rsize, self.checks, self.fmask,
                          i64_bits(cid), i64_bits(rid), 0 if key is None else 1, self.dd_index,
                          self.dd_ent, self.dd_pool.size, self.ring_hdr[w], self.ring_u8[w],
                          self.ring_cap[w], self.ev_off, w, self.ft, self.free, self.meta, self.fdec,
                          adm.seq, now, adm.deadline(now, deadline_us), self.behind_ns)
        if res < 0:
            return False
        row = res >> 1
        self.ft[row, K.ROUTED] = time.monotonic_ns()
        if res & 1:
            self.views.owe(w)
        if self.compiled:
            adm.commit(None)
            self.env_id[row, :len(peer)] = np.frombuffer(peer, np.uint8)
            self.env_len[row] = len(peer)
            self.env_delim[row] = len(frames) == 3
            self.dup[row] = 0
            p = self.peer_now                     # two scalar stores: a divmod row cost 2.8x
            self.peer[row, 0], self.peer[row, 1] = p >> 64, p & 0xFFFF_FFFF_FFFF_FFFF
            return True
        adm.commit(peer)
        self.envelopes[row] = frames[:-1]
        self.peers[row] = self.peer_now
        if key is not None:
            self.keys[row] = key
            self.inflight[key] = row
        return True

    def holds(self, row: int, rhash: int) -> bool:
        """Row ``row`` in flight is a request whose one event hashes to ``rhash``
        (dedup.records_hash): a retry with that key and event is the same request."""
        return int(self.ft[row, K.RHASH]) == rhash

    def next_deadline(self) -> int:
        """A lower bound of the earliest deadline in flight (K.NO_DEADLINE: none)."""
        return int(self.meta[K.MIN_DEADLINE])

    def attach(self, row: int, envelope, req) -> None:
        """A retry of in-flight row ``row`` (its own transport): answered with its decision."""
        self.duplicates.setdefault(row, []).append((envelope, req))
        self.dup[row] = 1

    # --- responses ---------------------------------------------------------------------------

    def deliver(self, w: int, pos: int, n: int, now: int) -> int:
        """File the fast responses among ``n`` drained slots of worker ``w``'s response ring
        and send their replies. Returns how many slots belong to the general path."""
        if self.compiled:
            ndup, nslow = self._deliver_send(self.h, w, pos, n, now, self.instrument,
                                             self.window_ns, self._dpack, self._resp)
            for row in self.done[:ndup].tolist():
                self._reply_duplicates(row)
            return nslow
        ndone, nslow = self._deliver(self.resp_u8[w], pos, n, self.done, now, *self._tail)
        for row in self.done[:ndone].tolist():
            self._reply(row)
        return nslow

    def expire(self, now: int) -> None:
        """Answer every row whose deadline passed, if any may have, with the configured
        default (TIMEOUT or WORKER_LOST, logged and counted: ingress.timeouts)."""
        if self.meta[K.MIN_DEADLINE] > now:
            return
        to = self.timeouts
        k = self._expired(self.ft, self.meta, now, self.done)
        for row in self.done[:k].tolist():
            w = int(self.ft[row, K.WORKER])
            flag, code = to.expiry(w, now - int(self.ft[row, K.ARRIVAL]))
            K.default_decision(self.fdec[row], to.action, int(flag), int(code))
            self.finish(row, int(code), now)

    def finish(self, row: int, code: int, now: int) -> None:
        self._finish(row, code, now, *self._tail)
        self._reply(row)

    def _reply(self, row: int) -> None:
        if self.compiled:
            self.admission.release(None)
            self._send_reply(self.h, row, self.env_id, self.env_len, self.env_delim, self.fout,
                             self.c_req)
            return self._reply_duplicates(row)
        env = self.envelopes[row]
        self.envelopes[row] = None
        self.admission.release(env[0])
        o = row * K.REPLY_BYTES
        self.replies.send_frames(env, self.fout_bytes[o:o + K.REPLY_BYTES], "binary")
        key = self.keys[row]
        if key is not None:
            self.keys[row] = None
            self.dedup.end_inflight(key, row)   # only if still this row's entry
        self._reply_duplicates(row)

    def _reply_duplicates(self, row: int) -> None:
        """The retries attached to row ``row`` (general path), answered with its decision."""
        self.dup[row] = 0
        dups = self.duplicates.pop(row, None) if self.duplicates else None
        if dups:
            slots = self.fdec[row].copy().view(RESPONSE_SLOT_DTYPE)
            slots["flags"] |= np.uint8(DecisionFlag.DUPLICATE)
            for env, req in dups:
                self.replies.send_decision(env, req, slots)
