"""The ingress's general path: every request the fast path (ingress.fastpath) declines.

Per message it decodes and validates (ingress.codec), applies the admission policy
(ingress.admission) and the idempotency window (ingress.dedup), routes each event by a hash
of the shard key to its worker, copies the records into the rings in one batch operation per
worker (ingress._batch_kernels), and answers when every event of the request has a decision,
when its deadline passes (flagged TIMEOUT or WORKER_LOST, ingress.timeouts), or at once when
it cannot be admitted (OVERLOADED, or the configured ``ingress.on_overload`` default). With
``ingress.compiled_loop`` most binary batches never reach it (the compiled loop's batch
table, ingress.batchtable, keeps them; its rows move here for retries, fired lists and
deadlines); the rest are first offered to one compiled admission
(ingress.batchadmit: what it declines takes the steps above), and a binary request's reply
(one envelope, no retry attached) is encoded, sent, remembered and counted in one compiled
call (_batch_kernels.finish_send).
"""
from __future__ import annotations

import heapq
import time

import numba
import numpy as np

from shm.control import LATENCY_BOUNDS_NS, STAGES, N_CODES, observe_request
from shm.types import DecisionFlag, ErrorCode, RESPONSE_SLOT_DTYPE
from ingress.admission import ADMITTED, Admission, RingViews, Shards
from ingress.codec import split_envelope
from ingress.dedup import CONFLICT, IdempotencyWindow, i64_bits, record_mask, records_hash
from ingress.replies import TRANSPORT, Replies
from ingress.timeouts import Timeouts
from ingress import _batch_kernels as BK
from ingress import wire
from ingress._loop_kernels import ID_BYTES
from ingress.wire import WireError
from shm.ring import bind_entry
from shm.tokens import FAST_BIT, INDEX_BITS

DUP_FIRED_MAX_INDEXES = 1 << 18       # full fired lists kept for retries (about 10 MiB)
SLOT_BYTES = RESPONSE_SLOT_DTYPE.itemsize


class Pending:
    """One request in flight."""
    __slots__ = ("seq", "envelopes", "req", "slots", "flat", "raw", "remaining", "deadline_ns",
                 "arrival_ns", "routed_ns", "first_resp_ns", "workers", "dedup_key", "rhash", "peer")

    def __init__(self, seq, envelope, req, n, arrival_ns, deadline_ns, workers, dedup_key):
        self.seq = seq
        self.envelopes = [(envelope, req)]   # a retry in flight adds its own (envelope, req)
        self.req = req
        self.slots = np.zeros(n, RESPONSE_SLOT_DTYPE)
        self.flat = self.slots.view(np.uint8)                      # the slots' bytes
        self.raw = self.flat.reshape(n, SLOT_BYTES)                   # row i = slot i's bytes
        self.remaining = n
        self.arrival_ns = arrival_ns
        self.deadline_ns = deadline_ns
        self.routed_ns = 0
        self.first_resp_ns = 0
        self.workers = workers            # set of worker indexes holding this request's events
        self.dedup_key = dedup_key
        self.rhash = 0                    # records_hash of its events (keyed requests)
        self.peer = 0                     # its sender (shm.ipv6.peer_key), when captured (ingress.autoblock)


class GeneralPath:
    owners = None                               # ingress.ownercheck.OwnerCheck on a cluster node

    def __init__(self, cfg, block, rings: list, codec, dedup: IdempotencyWindow,
                 admission: Admission, shards: Shards, views: RingViews, replies: Replies,
                 timeouts: Timeouts, fast):
        """``fast``: the fast path, asked about its rows in flight when a retry arrives."""
        self.codec, self.dedup, self.admission, self.shards = codec, dedup, admission, shards
        self.views, self.replies, self.timeouts, self.fast = views, replies, timeouts, fast
        self.rings = rings
        self.n_workers = len(rings)
        self.rsize = cfg.schema.record_size
        self.fmask = record_mask(cfg.schema.dtype)     # the records hash leaves padding out
        self.fired_rings = [r.fired for r in rings]
        self.fired_lists: dict[int, list] = {}     # token -> every fired index (JSON, overflow)
        # idempotency key -> (expiry ns, {decision index: every fired index}) of decided
        # requests that overflowed, so a JSON retry lists them all too; oldest first
        self.dup_fired: dict[tuple, tuple] = {}
        self.dup_fired_n = 0                       # indexes held there (bounded)
        self.overload_action = {"error": -1, "allow": 0, "review": 1, "block": 2}[cfg.ingress.on_overload]
        self.pending: dict[int, Pending] = {}
        self.autoblock = None                      # ingress.autoblock: rules that block a source
        self.deadlines: list[tuple[int, int]] = []
        self.batch = None                          # ingress.batchadmit, set by the compiled loop
        self.table = None                          # ingress.batchtable, likewise
        self.instrument = cfg.metrics.enabled
        self.c_requests = block.view("ingress.requests").reshape(2, N_CODES)
        self.c_decisions = block.view("ingress.decisions")
        self.c_dedup = block.view("ingress.deduplicated")
        self.c_overloaded = block.view("ingress.overloaded")          # by OVERLOAD_REASONS
        self.c_eval = block.view("ingress.eval_hist").reshape(2, -1)
        self.c_stage = block.view("ingress.stage_hist").reshape(len(STAGES), -1)
        self._bind_kernels()

    def _bind_kernels(self) -> None:
        """The compiled calls (ingress._batch_kernels), bound to exactly the argument types
        they get: a call then skips Numba's per-call type dispatch."""
        ty, i64, v = numba.typeof, numba.types.int64, self.views
        u8 = ty(np.zeros(1, np.uint8))
        self._no_widx = np.zeros(0, np.intp)       # every record to the one worker
        self.ring_args = [(v.ring_hdr[w], v.ring_u8[w], v.ring_cap[w], v.ev_off)
                          for w in range(self.n_workers)]
        self._stage = bind_entry(BK.stage, (u8, i64, i64, ty(self._no_widx), i64, ty(v.ring_hdr[0]),
                                            ty(v.ring_u8[0]), i64, i64, i64, i64, i64, i64))
        resp_t = ty(v.resp_u8[0])
        self.run_buf = np.zeros((max(r.response.capacity for r in self.rings), 3), np.int64)
        self._runs = bind_entry(BK.runs, (resp_t, i64, i64, ty(self.run_buf)))
        raw_t = ty(np.zeros((1, SLOT_BYTES), np.uint8))
        self._file_run = bind_entry(BK.file_run, (resp_t, i64, i64, i64, raw_t))
        self._count_actions = bind_entry(BK.count_actions, (raw_t, ty(self.c_decisions)))
        self.compiled_send = self.fast.compiled    # ingress.compiled_loop
        if not self.compiled_send:
            return
        # the compiled loop's binary replies (BK.finish_send): one call per finished request
        self.out = np.zeros(wire.REPLY_HEADER_SIZE + self.codec.max_batch * wire.DECISION_SIZE, np.uint8)
        self.idbuf, self.ts = np.zeros(ID_BYTES, np.uint8), np.zeros(2, np.int64)
        dd = self.dedup.tables
        self._finish_args = (self.codec.flag_errors, self.c_requests[TRANSPORT["binary"]],
                             self.c_decisions, self.c_eval[TRANSPORT["binary"]], self.c_stage,
                             LATENCY_BOUNDS_NS)
        self._dd_args = (dd[0], dd[1], dd[2], dd[3], self.dedup.window_ns, self.ts)
        a = self._finish_args
        self._finish_send = bind_entry(BK.finish_send, (
            i64, ty(b"x"), i64, raw_t, u8, u8, i64, ty(a[0]), i64, ty(a[1]), i64, ty(a[2]),
            ty(a[3]), ty(a[4]), ty(a[5])) + (i64,) * 6 + tuple(ty(x) for x in dd)
            + (i64, ty(self.ts)))

    @property
    def in_use(self) -> int:
        return len(self.pending) + (self.table.used if self.table is not None else 0)

    def next_deadline(self, fallback: int) -> int:
        """The earliest deadline in flight, or ``fallback`` if that is earlier."""
        if self.table is not None:
            fallback = min(fallback, self.table.next_deadline())
        return min(fallback, self.deadlines[0][0]) if self.deadlines else fallback

    # --- requests ----------------------------------------------------------------------------

    def handle(self, frames: list, now_ns: int) -> None:
        if self.batch is not None:                 # a binary batch, admitted in one call
            got = self.batch.try_admit(frames, now_ns)
            if got is not None:
                return self._track(now_ns, *got)
        try:
            envelope, body = split_envelope(frames)
        except WireError as e:
            return self.replies.error(e.envelope, e)
        try:
            req = self.codec.decode(body)
        except WireError as e:
            return self.replies.error(envelope, e)
        if req.rules_of >= 0:                  # not an evaluation: the rule ids of a generation
            return self.replies.send_rules(envelope, req)
        n = len(req.records)
        adm = self.admission
        refused = adm.refusal(envelope[0])     # bounded: shed load
        if refused != ADMITTED:
            return self._overloaded(envelope, req, n, now_ns, refused, adm.why(refused))
        dkey = None
        rhash = 0
        if req.client_id and self.dedup.enabled:
            dkey = (req.client_id, req.request_id)
            rhash = records_hash(req.records, self.fmask)
            p = self.dedup.pending(dkey)
            if p is None:                          # the compiled loop's rows are not there
                p = self.fast.pending_row(dkey)
            if p is None and self.table is not None:   # nor its batches' (then moved here)
                p = self.table.evict_key(dkey)
            if type(p) is int:                     # first copy in flight on the fast path
                if n != 1 or not self.fast.holds(p, rhash):
                    return self.replies.conflict(envelope, req)
                self.c_dedup[0] += 1
                return self.fast.attach(p, envelope, req)
            if p is not None:                      # first copy in flight: answer both
                if len(p.slots) != n or p.rhash != rhash:
                    return self.replies.conflict(envelope, req)
                self.c_dedup[0] += 1
                p.envelopes.append((envelope, req))
                return
            slots = self.dedup.decided_slots(dkey, now_ns, n, rhash)
            if slots is CONFLICT:
                return self.replies.conflict(envelope, req)
            if slots is not None:
                self.c_dedup[0] += 1
                kept = self.dup_fired.get(dkey) if req.kind == "json" else None
                self.replies.send_decision(envelope, req, slots, kept[1] if kept else None)
                return
        if self.owners is not None:                # after the window: a decided retry is answered
            p = self.owners.foreign(req.records)
            if p >= 0:                             # another node's partition: never evaluated here
                return self.replies.error(envelope, self.owners.refusal(p, req.request_id, req.kind))
        recs = req.records.view(np.uint8)
        if self.n_workers == 1:
            widx, groups = self._no_widx, ((0, n),)
        elif n == 1:
            widx, groups = self._no_widx, ((self.shards.worker_of_record(recs, 0), 1),)
        else:
            widx = self.shards.of(req.records)
            counts = np.bincount(widx, minlength=self.n_workers).tolist()
            groups = tuple((w, c) for w, c in enumerate(counts) if c)
        for w, count in groups:                    # all-or-nothing: room in every ring first
            refused = adm.worker_refusal(w, count, now_ns)
            if refused != ADMITTED:
                return self._overloaded(envelope, req, n, now_ns, refused, adm.why(refused, w, now_ns))
        seq = adm.commit(envelope[0])
        views = self.views
        cid, rid = i64_bits(req.client_id), i64_bits(req.request_id)   # journaled with the events
        for w, _ in groups:                        # records straight into the ring slots
            owed = self._stage(recs, n, self.rsize, widx, w, *self.ring_args[w],
                               seq << INDEX_BITS, now_ns, cid, rid)
            if owed > 0:
                views.owe(w)
        views.owed_since = views.owed_since or now_ns
        self._track(now_ns, envelope, req, seq, [w for w, _ in groups], dkey, rhash)

    def _track(self, now_ns: int, envelope, req, seq: int, workers: list, dkey, rhash: int) -> None:
        """Keep admitted request ``seq`` (its events in the rings of ``workers``) in flight."""
        n = len(req.records)
        deadline = self.admission.deadline(now_ns, req.deadline_us, n)
        p = Pending(seq, envelope, req, n, now_ns, deadline, workers, dkey)
        p.peer = self.fast.peer_now           # the compiled loop's capture of this message
        p.rhash = rhash
        p.routed_ns = time.monotonic_ns()
        self.pending[seq] = p
        heapq.heappush(self.deadlines, (deadline, seq))
        if dkey is not None:
            self.dedup.start(dkey, p)

    def _overloaded(self, envelope, req, n: int, now_ns: int, reason: int, why: str) -> None:
        self.c_overloaded[reason] += 1
        if self.overload_action < 0:
            return self.replies.error(envelope, WireError(
                ErrorCode.OVERLOADED, f"{why}; nothing was evaluated",
                request_id=req.request_id, kind=req.kind))
        p = Pending(0, envelope, req, n, now_ns, now_ns, [], None)
        self._default(p, self.overload_action, DecisionFlag.DEFAULT_OVERLOAD, ErrorCode.OVERLOADED)
        self._finish(p, int(ErrorCode.OVERLOADED))

    # --- responses ---------------------------------------------------------------------------

    def drain_fired(self, w: int) -> None:
        """Keep the full fired lists the worker published (before their response slots) for
        pending JSON requests; binary replies carry the slot's MAX_FIRED, so others drop."""
        ring = self.fired_rings[w]
        while True:             # until empty: only an empty read re-loads the producer position
            pos, n = ring.readable(ring.capacity)
            if n <= 0:
                return
            last = -1
            for v in ring.views(pos, n):
                for tok, cnt, idx, ttl in zip(v["token"].tolist(), v["count"].tolist(), v["idx"].tolist(),
                                              v["block_ttl_ms"].tolist()):
                    if self.table is not None and not tok & FAST_BIT and tok >> INDEX_BITS not in self.pending:
                        self.table.evict_seq(tok >> INDEX_BITS)    # a table row's: Python's now
                    if ttl and tok != last and self.autoblock:   # before this decision's reply
                        self.autoblock.decision(tok, ttl, self.fast, self.pending)
                        last = tok
                    p = None if tok & FAST_BIT else self.pending.get(tok >> INDEX_BITS)
                    if p is not None and (p.req.kind == "json" or p.dedup_key is not None):
                        self.fired_lists.setdefault(tok, []).extend(idx[:cnt])
            ring.release(n)

    def deliver(self, w: int, pos: int, n: int, tabled: bool = False) -> None:
        """File the general path's response slots among ``n`` drained ones of worker ``w``
        (from ring position ``pos``) into their requests; answer a request when it is
        complete. One compiled call splits the slots into runs of one request, one per run
        copies them (ingress._batch_kernels). ``tabled``: the batch table's slots among them
        are filed already (ingress._loop_table_kernels.drain_packed)."""
        now = time.monotonic_ns()
        if not tabled and self.table is not None and not self.table.deliver(w, pos, n, now):
            return                                 # every slot was a table row's
        resp_u8 = self.views.resp_u8[w]
        pending = self.pending
        k = self._runs(resp_u8, pos, n, self.run_buf)
        for a, b, seq in self.run_buf[:k].tolist():
            p = pending.get(seq)
            if p is None:                          # already answered (deadline): drop it
                continue
            p.remaining -= self._file_run(resp_u8, pos, a, b, p.raw)
            if not p.first_resp_ns:
                p.first_resp_ns = now
            if p.remaining <= 0:
                self._finish(p, 0)

    def _default(self, p: Pending, action: int, flag: int, code: int) -> None:
        """Fill every slot that has no decision yet with a default one (generation 0 marks
        an unanswered slot: real generations start at 1)."""
        todo = p.slots["generation"] == 0
        p.slots["action"][todo] = action
        p.slots["flags"][todo] |= np.uint8(flag)
        p.slots["error"][todo] = code
        p.slots["score"][todo] = 0.0
        p.remaining = 0

    def expire(self, now: int) -> None:
        """Answer every request whose deadline passed by ``now`` (ingress.timeouts)."""
        if self.table is not None:                 # its rows past theirs are answered here
            self.table.expire(now)
        if not self.deadlines or self.deadlines[0][0] > now:
            return
        now = time.monotonic_ns()
        to = self.timeouts
        while self.deadlines and self.deadlines[0][0] <= now:
            _, seq = heapq.heappop(self.deadlines)
            p = self.pending.get(seq)
            if p is None:
                continue
            flag, code = to.expiry(to.blame(p.workers), now - p.arrival_ns)
            self._default(p, to.action, flag, code)
            self._finish(p, int(code))

    def _finish(self, p: Pending, code: int) -> None:
        self.pending.pop(p.seq, None)
        if p.seq:                                  # admitted (not an overload default)
            self.admission.release(p.envelopes[0][0][0])
        fired = None
        if self.fired_lists:
            base = p.seq << INDEX_BITS
            fired = {i: self.fired_lists.pop(base + i) for i in range(len(p.slots)) if base + i in self.fired_lists}
            if fired and p.dedup_key is not None:
                self._keep_dup_fired(p.dedup_key, fired)
        env = p.envelopes[0][0]
        if self.compiled_send and self.fast.h and p.req.kind == "binary" \
                and len(p.envelopes) == 1 and len(env[0]) <= ID_BYTES:
            return self._finish_compiled(p, env, code)
        for i, (env, req) in enumerate(p.envelopes):
            slots = p.slots
            if i:                                  # retries that arrived while in flight
                slots = slots.copy()
                slots["flags"] |= np.uint8(DecisionFlag.DUPLICATE)
            self.replies.send_decision(env, req, slots, fired)
        t = TRANSPORT[p.req.kind]
        now = time.monotonic_ns()
        if p.dedup_key is not None:
            self.dedup.finish(p.dedup_key, p.flat, now, owner=p, rhash=p.rhash)
        if not self.instrument:             # metrics.enabled: false (bench.metrics_overhead)
            return
        self.c_requests[t, code] += 1
        self._count_actions(p.raw, self.c_decisions)
        observe_request(self.c_eval[t], self.c_stage, LATENCY_BOUNDS_NS, p.arrival_ns,
                        p.routed_ns, p.first_resp_ns, now)

    def _finish_compiled(self, p: Pending, env: list, code: int) -> None:
        """The rest of _finish for one binary reply, in one compiled call (BK.finish_send):
        the same bytes sent, the same window entry and counts."""
        key = p.dedup_key
        cid = 0
        if key is not None:
            self.dedup.end_inflight(key, p)
            cid = i64_bits(key[0])
        self._finish_send(self.fast.h, env[0], len(env) == 2, p.raw, self.out, self.idbuf,
                          i64_bits(p.req.request_id), self._finish_args[0], code,
                          self._finish_args[1], int(self.instrument), *self._finish_args[2:],
                          p.arrival_ns, p.routed_ns, p.first_resp_ns, int(key is not None), cid,
                          p.rhash, *self._dd_args)

    def _keep_dup_fired(self, key, fired: dict) -> None:
        """Keep an overflowed decision's full fired lists while the window keeps the
        decision; expired ones go, and the oldest while over DUP_FIRED_MAX_INDEXES (a retry
        of those lists 16 with FIRED_OVERFLOW)."""
        now = time.monotonic_ns()
        d = self.dup_fired
        old = d.pop(key, None)
        if old is not None:
            self.dup_fired_n -= sum(map(len, old[1].values()))
        d[key] = (now + self.dedup.window_ns, fired)
        self.dup_fired_n += sum(map(len, fired.values()))
        while d:
            k, (exp, lists) = next(iter(d.items()))
            if exp > now and self.dup_fired_n <= DUP_FIRED_MAX_INDEXES:
                break
            del d[k]
            self.dup_fired_n -= sum(map(len, lists.values()))
