"""The front door: one ROUTER socket, the request rings to the workers, the response rings back.

Started by the supervisor as ``python -m ingress.router --run-dir D``. One thread, one
epoll over the ROUTER socket's ZMQ_FD and the eventfd doorbell of the response rings; after
its last work it polls both for ``ingress.spin_us`` (yielding the CPU each round), then
sleeps in the epoll, so nothing spins while idle. Per message it decodes and validates
(ingress.codec), routes each event by a hash of the shard key to its worker (single writer
per key), copies the records into the rings in one batch operation per worker, and answers
when every event of the request has a decision, when its deadline passes (the configured
default, flagged TIMEOUT or WORKER_LOST), or at once when it cannot be admitted (OVERLOADED).

Binary requests with one event, the latency-critical case, take a compiled fast path first
(ingress.fastpath: a preallocated in-flight table, one compiled call per request and one per
drained batch of responses); everything else, and anything the fast path declines, takes the
general path below. Both share the limits, the idempotency window and the metrics.
"""
from __future__ import annotations

import argparse
import heapq
import os
import resource
import select
import struct
import sys
import time

import numba
import numpy as np
import zmq

from engine import gcstats, procname, rundir
from engine.control import (BLOCKS_EVERY_NS, LATENCY_BOUNDS_NS, N_CODES, OVERLOAD_REASONS, STAGES,
                            EventLog, observe_request)
from engine.rings import EngineRings
from engine.topology import pin_self
from engine.types import Action, DecisionFlag, ErrorCode, RESPONSE_SLOT_DTYPE, request_slot_dtype
from ingress.codec import Codec, RulesetMeta, frame_kind, peek_request_id, split_envelope
from ingress.conns import SERVICE_EVERY_NS, Connections, effective_cap, raise_nofile_limit
from ingress.dedup import CONFLICT, IdempotencyWindow, i64_bits, records_hash
from ingress.discard import FrameDiscarder
from ingress.fastpath import FastPath
from ingress import _fast_kernels as FK
from ingress._fast_kernels import FAST_BIT, MIN_DEADLINE
from ingress import _batch_kernels as BK
from ingress._batch_kernels import EVENT_BITS
from ingress.sockopts import SockOpts, backend_send
from ingress import wire
from ingress.wire import WireError
from shm.doorbell import EventfdDoorbell
from shm.idle import SpinPayoff
from shm.ring import bind_entry

EPOCH_SHIFT = 40                      # request sequence = (ingress epoch << 40) + counter: a
EPOCHS = 128                          # restarted ingress never matches a predecessor's token;
                                      # under 2^47, so bit 63 of a token is free (fast path)
_HASH_MUL_INT = 0x9E3779B97F4A7C15      # shard = ((key * this) mod 2^64 >> 32) mod workers
_HASH_MUL = np.uint64(_HASH_MUL_INT)
_U64 = (1 << 64) - 1
_FAST_BIT = int(FAST_BIT)
_RID = struct.Struct("<Q")             # the request id of a binary request header
_RID_AT = wire.REQUEST_HEADER_DTYPE.fields["request_id"][1]
TIMEOUT_BURST_NS = 100_000_000        # timeouts closer than this share one log entry
READ_BATCH = 256                      # requests read before the responses get their turn
MAX_FRAMES = 4                        # frames kept of one message: identity, delimiter, body
                                      # and one more, to see there are too many
CLOSE_OVER_FRAMES = 1024              # a message of more frames is abuse, not a client's slip:
                                      # its connection is closed (ingress.conns)
SHED_AFTER_NS = 5_000_000             # a queue that has not emptied for 5 ms: shed
SHED_PEER_SHARE = 32                  # while shedding, a peer's messages read per SHED_AFTER_NS
                                      # that are still served; beyond, only its are shed
DOORBELL_DEFER_NS = 100_000           # while more requests are queued, wake a sleeping worker
                                      # at most this late (one wake-up for several requests)
_POLLIN = int(zmq.POLLIN)             # plain ints: the enum forms cost 2.5 us per socket call
_MORE_NOWAIT, _NOWAIT = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)   # per socket call
_TRANSPORT = {"binary": 0, "json": 1}
SHED_MESSAGE = "shedding load: the front door is behind; retry later"
_SHED_BYTES = SHED_MESSAGE.encode()
_OVERLOADED, _BAD_FRAME = int(ErrorCode.OVERLOADED), int(ErrorCode.BAD_FRAME)
_SHED, _RING_FULL, _MAX_INFLIGHT, _BEHIND, _PEER_INFLIGHT = (OVERLOAD_REASONS.index(r) for r in (
    "shed", "ring_full", "max_inflight", "worker_behind", "peer_inflight"))
IDEMPOTENCY_CONFLICT_MESSAGE = "request_id already used by this client_id for other events"
DUP_FIRED_MAX_INDEXES = 1 << 18       # full fired lists kept for retries (about 10 MiB)
SLOT_BYTES = RESPONSE_SLOT_DTYPE.itemsize


class _Pending:
    """One request in flight."""
    __slots__ = ("seq", "envelopes", "req", "slots", "flat", "raw", "remaining", "deadline_ns",
                 "arrival_ns", "routed_ns", "first_resp_ns", "workers", "dedup_key", "rhash")

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


def shard_of(keys: np.ndarray, n_workers: int) -> np.ndarray:
    """Worker index per event: a multiplicative hash of the shard key (vectorised)."""
    h = keys.astype(np.uint64, copy=False) * _HASH_MUL
    return ((h >> np.uint64(32)) % np.uint64(n_workers)).astype(np.intp)


def shard_struct(dt: np.dtype) -> struct.Struct:
    """A struct reading one integer shard key field of dtype ``dt`` (little-endian)."""
    code = {1: "b", 2: "h", 4: "i", 8: "q"}[dt.itemsize]
    return struct.Struct("<" + (code.upper() if dt.kind == "u" else code))


class Router:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.cfg = cfg = rundir.read_config(run_dir)
        plan = rundir.read_plan(run_dir)
        self.n_workers = len(plan["workers"])
        self.block, self._block_seg = rundir.attach_control(run_dir, cfg)
        self.efd = EventfdDoorbell(plan["eventfd"])
        self.rings = [EngineRings.attach(cfg, plan, w, self.efd) for w in range(self.n_workers)]
        self.response_rings = [r.response for r in self.rings]
        self.fired_rings = [r.fired for r in self.rings]
        self.fired_lists: dict[int, list] = {}     # token -> every fired index (JSON, overflow)
        # idempotency key -> (expiry ns, {decision index: every fired index}) of decided
        # requests that overflowed, so a JSON retry lists them all too; oldest first
        self.dup_fired: dict[tuple, tuple] = {}
        self.dup_fired_n = 0                       # indexes held there (bounded)
        self.codec = Codec(cfg.schema, cfg.ingress.max_batch, cfg.ingress.max_frame_bytes)
        self.slot_dtype = request_slot_dtype(cfg.schema.dtype)
        self.shard_key = cfg.schema.shard_key
        self.default_deadline_ns = cfg.ingress.default_deadline_ms * 1_000_000
        # a worker whose oldest unfinished event has waited half the default deadline is
        # behind: new work for it is refused (OVERLOADED) until it catches up, so what it
        # admits can still be decided in time and its ring never holds a deadline's worth
        self.behind_ns = self.default_deadline_ns // 2
        self.timeout_action = int(Action.ALLOW if cfg.ingress.on_timeout == "allow" else Action.BLOCK)
        self.overload_action = {"error": -1, "allow": 0, "review": 1, "block": 2}[cfg.ingress.on_overload]
        self.pending: dict[int, _Pending] = {}
        self.deadlines: list[tuple[int, int]] = []
        self.instrument = cfg.metrics.enabled
        self.max_inflight = cfg.ingress.max_inflight
        # one connection's share: a client pipelining requests cannot take every slot
        self.max_per_peer = cfg.ingress.max_inflight_per_peer or max(1, self.max_inflight // 4)
        self.peer_inflight: dict[bytes, int] = {}   # ROUTER identity -> requests in flight
        self.backlog_since = 0             # since when the socket queue has not emptied
        self.backlog_reads = 0             # requests read since then
        self.shed_reads: dict[bytes, int] = {}   # while shedding: messages per peer this round
        self.shed_round_end = 0
        self.spin_ns = cfg.ingress.spin_us * 1000
        self.owed_since = 0                # first publish whose doorbell is deferred (0: none)
        self.dedup = IdempotencyWindow(cfg.ingress.dedup_window_s * 1_000_000_000,
                                       cfg.ingress.dedup_max_entries, cfg.ingress.dedup_max_bytes,
                                       meta=self.block.view("ingress.dedup_meta"))
        self.metas: dict[int, RulesetMeta] = {}
        self.sock: zmq.Socket | None = None
        epoch = (int(self.block.view("supervisor.ingress_restarts")[0]) + 1) % EPOCHS
        self.seq = (epoch << EPOCH_SHIFT) + 1
        self.rsize = cfg.schema.record_size
        # the offsets ingress._fast_kernels.write_slot stores at
        assert [self.slot_dtype.fields[f][1] for f in ("token", "arrival_ns", "client_id", "request_id")] \
            == [0, 8, 16, 24]
        b = self.block
        self.c_requests = b.view("ingress.requests").reshape(2, N_CODES)
        self.c_decisions = b.view("ingress.decisions")
        self.c_inflight = b.view("ingress.inflight")
        self.c_accepting = b.view("ingress.accepting")
        self.c_dedup = b.view("ingress.deduplicated")
        self.c_overloaded = b.view("ingress.overloaded")          # by OVERLOAD_REASONS
        self.c_timeouts = b.view("ingress.timeouts")
        self.c_lost = b.view("ingress.worker_lost")
        self.timeout_log = EventLog(b.view("ingress.timeout_log"))
        self.c_eval = b.view("ingress.eval_hist").reshape(2, -1)
        self.c_stage = b.view("ingress.stage_hist").reshape(len(STAGES), -1)
        self.stop = b.view("supervisor.stop")
        self.alive = b.view("supervisor.worker_alive")
        self.bounds = LATENCY_BOUNDS_NS
        key = cfg.schema.dtype.fields[self.shard_key]
        self.shard_struct = shard_struct(key[0])
        self.shard_off = key[1]
        self.fast = FastPath(self, self.max_inflight)
        self._bind_kernels()

    # --- set-up ------------------------------------------------------------------------------

    def _bind_kernels(self) -> None:
        """The general path's compiled calls (ingress._batch_kernels), bound to exactly the
        argument types they get: a call then skips Numba's per-call type dispatch."""
        ty, i64, fast = numba.typeof, numba.types.int64, self.fast
        u8 = ty(np.zeros(1, np.uint8))
        self._no_widx = np.zeros(0, np.intp)       # every record to the one worker
        self.ring_args = [(fast.ring_hdr[w], fast.ring_u8[w], fast.ring_cap[w], fast.ev_off)
                          for w in range(self.n_workers)]
        self._stage = bind_entry(BK.stage, (u8, i64, i64, ty(self._no_widx), i64, ty(fast.ring_hdr[0]),
                                            ty(fast.ring_u8[0]), i64, i64, i64, i64, i64, i64))
        resp_t = ty(fast.resp_u8[0])
        self.run_buf = np.zeros((max(r.response.capacity for r in self.rings), 3), np.int64)
        self._runs = bind_entry(BK.runs, (resp_t, i64, i64, ty(self.run_buf)))
        raw_t = ty(np.zeros((1, SLOT_BYTES), np.uint8))
        self._file_run = bind_entry(BK.file_run, (resp_t, i64, i64, i64, raw_t))
        self._count_actions = bind_entry(BK.count_actions, (raw_t, ty(self.c_decisions)))

    def _socket(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # Frames up to max_frame_bytes are decoded; up to twice that they get FRAME_TOO_LARGE;
        # beyond, ZeroMQ drops the connection before buffering them (memory bound).
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.cfg.ingress.max_frame_bytes + 4096)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        curve = self.cfg.ingress.curve
        if curve.enabled:
            from ingress.security import configure_server
            configure_server(ctx, sock, curve)
        sock.bind(self.cfg.ingress.bind)
        return sock

    def meta(self, generation: int) -> RulesetMeta | None:
        m = self.metas.get(generation)
        if m is None:
            try:
                spec = rundir.read_generation(self.run_dir, generation)
            except OSError:
                return None
            m = self.metas[generation] = RulesetMeta(generation, spec["label"],
                                                     tuple(spec["rule_ids"]), tuple(spec["modes"]))
        return m

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        # the start-up collection (~100 ms) before the socket binds: no request waits for it
        gcstats.freeze_after_warmup(self.block.view("ingress.gc_hist"))
        ctx = zmq.Context(io_threads=1)
        sock = self._socket(ctx)
        self.sock = sock
        self.opts = SockOpts(sock)
        self._send = backend_send(sock)
        self.discard = FrameDiscarder(sock).discard
        self.conns = self._connections(sock)
        conns_fd, conns_due = self.conns.fileno(), 0
        # One epoll over the ROUTER socket's ZMQ_FD and the responses' eventfd. zmq.Poller
        # made 6 system calls per wait here (two zmq_poll passes); this makes one, plus the
        # ZMQ_EVENTS check that the edge-triggered ZMQ_FD requires before every sleep.
        ep = select.epoll()
        ep.register(sock.getsockopt(zmq.FD), select.EPOLLIN)
        ep.register(self.efd.fileno(), select.EPOLLIN)
        ep.register(conns_fd, select.EPOLLIN)
        accepting = True
        self.c_accepting[0] = 1
        fast, fast_meta = self.fast, self.fast.meta
        c_blocks, blocks_due = self.block.view("ingress.py_blocks"), 0
        payoff, idle_since = SpinPayoff(self.spin_ns), 0   # spin only while it pays
        while True:
            if accepting and self.stop[0]:         # stop: read no more requests; finish the rest
                accepting = False
                self.c_accepting[0] = 0
            if not accepting and not self.pending and not fast.in_use:
                break
            got = self._read_requests(sock) if accepting else 0
            got += self._drain_responses()
            now = time.monotonic_ns()
            if self.deadlines and self.deadlines[0][0] <= now:
                self._expire()
            if fast_meta[MIN_DEADLINE] <= now:
                fast.expire(now)
            self.c_inflight[0] = len(self.pending) + fast.in_use
            if now >= blocks_due:       # a per-message leak shows here (bench.alloc); the call
                c_blocks[0] = sys.getallocatedblocks()      # costs 0.5 us, 2.5 % of a batched
                blocks_due = now + BLOCKS_EVERY_NS          # run's loop when made every round
            if now >= conns_due:                   # connections: counted, capped (ingress.conns)
                self.conns.service(now)
                conns_due = now + SERVICE_EVERY_NS
            if got:
                if idle_since:                     # work after a wait: would a spin have
                    payoff.gap(now - idle_since)   # caught it?
                    idle_since = 0
                continue                           # busy: look again before sleeping
            idle_since = idle_since or now
            if payoff.spin and self._spin_for_work(sock, accepting):
                continue
            timeout_s = max(0.0, min(0.1, (self._next_deadline() - time.monotonic_ns()) / 1e9))
            if any(r.response_sleep_begin() for r in self.rings):
                timeout_s = 0.0                    # a response arrived before we slept
            if timeout_s and not (accepting and self.opts.events() & _POLLIN):
                for fd, _ in ep.poll(timeout_s):
                    if fd == conns_fd:             # a connection came or went
                        conns_due = 0
            for r in self.rings:
                r.response_sleep_end()
            self.efd.drain()
        ep.close()
        self.conns.close()
        sock.close(linger=1000)
        if self.cfg.ingress.curve.enabled:
            from ingress.security import stop_authenticator
            stop_authenticator(ctx)
        ctx.term()
        for r in self.rings:
            r.close()
        self.efd.close()
        self._block_seg.close()
        return 0

    def _connections(self, sock: zmq.Socket) -> Connections:
        """The connection cap (ingress.conns), within this process's descriptor limit."""
        want = self.cfg.ingress.max_connections
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cap = effective_cap(want, nofile)
        if cap < want:
            print(f"risk-engine: ingress: ingress.max_connections={want} lowered to {cap}: "
                  f"RLIMIT_NOFILE={nofile}", file=sys.stderr, flush=True)
        b = self.block
        return Connections(sock, cap, b.view("ingress.connections"), b.view("ingress.connections_closed"))

    def _next_deadline(self) -> int:
        nxt = int(self.fast.meta[MIN_DEADLINE])
        return min(nxt, self.deadlines[0][0]) if self.deadlines else nxt

    def _spin_for_work(self, sock: zmq.Socket, accepting: bool) -> bool:
        """Nothing is ready: poll the response rings and the socket for up to ``spin_ns``
        (``ingress.spin_us``; 0 sleeps at once) before sleeping in epoll. A decision takes
        tens of microseconds and a client's next request often follows within a few hundred;
        sleeping and being woken by the worker's eventfd or by libzmq costs a CPU wake-up on
        top (about 100 us each, measured here with one client). Every round yields the CPU,
        so a runnable process on this CPU is not delayed. Returns True when something arrived.
        The loop calls it only while spinning pays (shm.idle.SpinPayoff)."""
        # never answer a deadline late for a spin
        end = min(time.monotonic_ns() + self.spin_ns, self._next_deadline())
        rings = self.response_rings
        events = self.opts.events
        while time.monotonic_ns() < end:
            for r in rings:
                if r.available():
                    return True
            if accepting and events() & _POLLIN:
                return True
            os.sched_yield()                       # a runnable process on this CPU goes first
        return False

    def _read_requests(self, sock: zmq.Socket) -> int:
        """Read what is queued, at most READ_BATCH messages (the response side gets its turn).
        NOBLOCK receives until zmq.Again: the exception costs 3.4 us once per call, where a
        ZMQ_EVENTS check before every message cost 1.1 us each (one 100-client profile put 8%
        of the ingress's samples there). Returns the count.

        Load shedding (CoDel-like): the socket's queue is invisible, but a queue that never
        empties is not. Once the queue has stayed non-empty for longer than SHED_AFTER_NS
        while at least READ_BATCH requests were read from it (sustained arrivals, not this
        process being descheduled for a while), the ingress answers what it reads from a
        peer over its share (``_over_share``) with OVERLOADED at once (a header peek, no
        decode) until the queue is empty. Checked per message, not per call: a call that
        decodes READ_BATCH requests takes several ms itself, and the refusals would wait
        behind it. Under overload the admitted requests keep a bounded latency, the peers
        that flood get a fast refusal, quiet peers are still served, and no queue grows."""
        n = 0
        rcvmore, recv = self.opts.rcvmore, sock.recv
        admit = self.fast.admit
        while n < READ_BATCH:
            try:
                frames = [recv(_NOWAIT)]
            except zmq.Again:                      # the queue is empty
                self.backlog_since = 0             # (the next request starts afresh)
                break
            frames.append(recv())                  # a ROUTER message is identity + >= 1 frame
            while rcvmore():                       # recv_multipart's enum RCVMORE cost more
                if len(frames) == MAX_FRAMES:      # than the frames themselves (sockopts.py)
                    frames = self._too_many_frames(frames)
                    break
                frames.append(recv())
            t = time.monotonic_ns()
            if not self.backlog_since:             # the queue is non-empty from here on
                self.backlog_since, self.backlog_reads = t, 0
            self.backlog_reads += 1
            if frames is None:                     # refused for its frame count: let the
                n = READ_BATCH                     # loop close its connection (ingress.conns)
            elif t - self.backlog_since > SHED_AFTER_NS and self.backlog_reads > READ_BATCH \
                    and self._over_share(frames[0], t):
                self._shed(frames)
            elif not admit(frames, t):
                self._handle(frames, t)
            n += 1
            if self.owed_since and t - self.owed_since > DOORBELL_DEFER_NS:
                self._ring_owed()
        self._ring_owed()                          # when the queue empties, or every call
        return n

    def _over_share(self, peer: bytes, now: int) -> bool:
        """While the shedder is on: has ``peer`` (a ROUTER identity) had its share of this
        round (SHED_PEER_SHARE messages per SHED_AFTER_NS)? Only those peers are shed, so
        one peer flooding the queue cannot get every other client refused: libzmq reads the
        peers' queues in turn, and a quiet peer's messages stay under its share."""
        if now >= self.shed_round_end:
            self.shed_reads.clear()
            self.shed_round_end = now + SHED_AFTER_NS
        c = self.shed_reads.get(peer, 0) + 1
        self.shed_reads[peer] = c
        return c > SHED_PEER_SHARE

    def _ring_owed(self) -> None:
        """Wake the workers that fell asleep while requests were published to them. Deferred
        while more requests are queued (at most DOORBELL_DEFER_NS): under load one wake-up
        serves several requests instead of one system call and context switch each."""
        for r in self.rings:
            r.request.ring_owed()
        self.owed_since = 0

    def _too_many_frames(self, frames: list) -> None:
        """A message of more than MAX_FRAMES frames is never valid: drop the rest unread (one
        compiled loop, nothing allocated per frame; ingress.discard) and answer BAD_FRAME. Over
        CLOSE_OVER_FRAMES frames, answer once per connection and close that connection soon
        after (ingress.conns), so it cannot queue more. Returns None: the message is done with."""
        try:                                       # the connection it came on, to close
            fd = self.sock.recv(copy=False).get(zmq.SRCFD)
        except zmq.ZMQError:
            fd = -1
        n = len(frames) + 1 + self.discard()
        if n > CLOSE_OVER_FRAMES and fd >= 0 and not self.conns.close_later(fd, time.monotonic_ns()):
            self.c_requests[0, _BAD_FRAME] += 1     # this connection had its reply
            return None
        env = frames[:2] if not frames[1] else frames[:1]
        body = frames[len(env)]
        self._reply_error(env, WireError(
            ErrorCode.BAD_FRAME, f"a message of {n} frames: expected [identity, (empty,) body]",
            request_id=peek_request_id(body), kind=frame_kind(body)))

    def _shed(self, frames: list) -> None:
        """OVERLOADED without decoding. A binary reply is a header packed onto a prepared
        message (the error path's exception and formatting cost as much again: shedding
        must be the cheapest thing the ingress does)."""
        body = frames[-1]
        self.c_overloaded[_SHED] += 1
        if body[:1] == b"{":
            return self._reply_error(frames[:-1], WireError(
                ErrorCode.OVERLOADED, SHED_MESSAGE, request_id=None, kind="json"))
        rid = _RID.unpack_from(body, _RID_AT)[0] if len(body) >= wire.REQUEST_HEADER_SIZE else 0
        self.c_requests[0, _OVERLOADED] += 1
        self.send_frames(frames[:-1], wire.pack_reply_header(_OVERLOADED, 0, rid, len(_SHED_BYTES))
                         + _SHED_BYTES, "binary")

    def _reply_error(self, envelope, e: WireError) -> None:
        self.c_requests[_TRANSPORT[e.kind], int(e.code)] += 1
        if envelope:
            self.send_frames(envelope, self.codec.error_reply(e), e.kind)

    def _handle(self, frames: list, now_ns: int) -> None:
        try:
            envelope, body = split_envelope(frames)
        except WireError as e:
            return self._reply_error(e.envelope, e)
        try:
            req = self.codec.decode(body)
        except WireError as e:
            return self._reply_error(envelope, e)
        n = len(req.records)
        if len(self.pending) + self.fast.in_use >= self.max_inflight:   # bounded: shed load
            return self._overloaded(envelope, req, n, now_ns, _MAX_INFLIGHT,
                                    f"ingress.max_inflight={self.max_inflight} requests in flight")
        if self.peer_inflight.get(envelope[0], 0) >= self.max_per_peer:
            return self._overloaded(envelope, req, n, now_ns, _PEER_INFLIGHT,
                                    f"ingress.max_inflight_per_peer={self.max_per_peer} requests "
                                    f"of this connection in flight")
        dkey = None
        rhash = 0
        if req.client_id and self.dedup.enabled:
            dkey = (req.client_id, req.request_id)
            rhash = records_hash(req.records)
            p = self.dedup.pending(dkey)
            if type(p) is int:                     # first copy in flight on the fast path
                if n != 1 or int(self.fast.ft[p, FK.RHASH]) != rhash:
                    return self._conflict(envelope, req)
                self.c_dedup[0] += 1
                return self.fast.attach(p, envelope, req)
            if p is not None:                      # first copy in flight: answer both
                if len(p.slots) != n or p.rhash != rhash:
                    return self._conflict(envelope, req)
                self.c_dedup[0] += 1
                p.envelopes.append((envelope, req))
                return
            slots = self.dedup.decided_slots(dkey, now_ns, n, rhash)
            if slots is CONFLICT:
                return self._conflict(envelope, req)
            if slots is not None:
                self.c_dedup[0] += 1
                kept = self.dup_fired.get(dkey) if req.kind == "json" else None
                self.send_decision(envelope, req, slots, kept[1] if kept else None)
                return
        recs = req.records.view(np.uint8)
        if self.n_workers == 1:
            widx, groups = self._no_widx, ((0, n),)
        elif n == 1:
            widx, groups = self._no_widx, ((self.worker_of_record(recs, 0), 1),)
        else:
            widx = shard_of(req.records[self.shard_key], self.n_workers)
            counts = np.bincount(widx, minlength=self.n_workers).tolist()
            groups = tuple((w, c) for w, c in enumerate(counts) if c)
        for w, count in groups:                    # all-or-nothing: room in every ring first
            if self.rings[w].free_request_slots() < count:
                return self._overloaded(envelope, req, n, now_ns, _RING_FULL, "a worker ring is full")
            age = self.fast.queue_age(w, now_ns)
            if age > self.behind_ns:
                return self._overloaded(envelope, req, n, now_ns, _BEHIND, f"worker {w} is behind: "
                                        f"its oldest queued event has waited {age / 1e6:.1f} ms")
        seq = self.seq
        self.seq += 1
        cid, rid = i64_bits(req.client_id), i64_bits(req.request_id)   # journaled with the events
        for w, _ in groups:                        # records straight into the ring slots
            owed = self._stage(recs, n, self.rsize, widx, w, *self.ring_args[w],
                               seq << EVENT_BITS, now_ns, cid, rid)
            if owed > 0:
                self.rings[w].request.doorbell_owed = True
        self.owed_since = self.owed_since or now_ns
        deadline = self.deadline(now_ns, req.deadline_us)
        p = _Pending(seq, envelope, req, n, now_ns, deadline, [w for w, _ in groups], dkey)
        p.rhash = rhash
        p.routed_ns = time.monotonic_ns()
        self.pending[seq] = p
        pin = self.peer_inflight
        pin[envelope[0]] = pin.get(envelope[0], 0) + 1
        heapq.heappush(self.deadlines, (deadline, seq))
        if dkey is not None:
            self.dedup.start(dkey, p)

    def _conflict(self, envelope, req) -> None:
        """The idempotency key of ``req`` belongs to a request with other events (in flight
        or decided): refused, never answered with that request's decision."""
        self._reply_error(envelope, WireError(
            ErrorCode.IDEMPOTENCY_CONFLICT, IDEMPOTENCY_CONFLICT_MESSAGE,
            request_id=req.request_id, kind=req.kind))

    def deadline(self, now_ns: int, deadline_us: int) -> int:
        """When a request that arrived at ``now_ns`` must be answered: its header's deadline,
        or ingress.default_deadline_ms when it carries none (0)."""
        return now_ns + (deadline_us * 1000 if deadline_us else self.default_deadline_ns)

    def worker_of_record(self, buf, off: int) -> int:
        """The worker of the one event record at ``buf[off:]``: ``shard_of`` for one key."""
        if self.n_workers == 1:
            return 0
        key = self.shard_struct.unpack_from(buf, self.shard_off + off)[0] & _U64
        return (((key * _HASH_MUL_INT) & _U64) >> 32) % self.n_workers

    def _overloaded(self, envelope, req, n: int, now_ns: int, reason: int, why: str) -> None:
        self.c_overloaded[reason] += 1
        if self.overload_action < 0:
            return self._reply_error(envelope, WireError(
                ErrorCode.OVERLOADED, f"{why}; nothing was evaluated",
                request_id=req.request_id, kind=req.kind))
        p = _Pending(0, envelope, req, n, now_ns, now_ns, [], None)
        self._default(p, self.overload_action, DecisionFlag.DEFAULT_OVERLOAD, ErrorCode.OVERLOADED)
        self._finish(p, int(ErrorCode.OVERLOADED))

    def _drain_responses(self) -> int:
        got = 0
        deliver = self.fast.deliver
        for w, ring in enumerate(self.response_rings):
            while True:
                pos, n = ring.readable(ring.capacity)
                self._drain_fired(w)               # after readable: covers these responses
                if n <= 0:
                    break
                if deliver(w, pos, n, time.monotonic_ns()):    # some belong to this path
                    self._deliver(self.fast.resp_u8[w], pos, n)
                ring.release(n)
                got += n
        return got

    def _drain_fired(self, w: int) -> None:
        """Keep the full fired lists the worker published (before their response slots) for
        pending JSON requests; binary replies carry the slot's MAX_FIRED, so others drop."""
        ring = self.fired_rings[w]
        while True:             # until empty: only an empty read re-loads the producer position
            pos, n = ring.readable(ring.capacity)
            if n <= 0:
                return
            for v in ring.views(pos, n):
                for tok, cnt, idx in zip(v["token"].tolist(), v["count"].tolist(), v["idx"].tolist()):
                    p = None if tok & _FAST_BIT else self.pending.get(tok >> EVENT_BITS)
                    if p is not None and (p.req.kind == "json" or p.dedup_key is not None):
                        self.fired_lists.setdefault(tok, []).extend(idx[:cnt])
            ring.release(n)

    def _deliver(self, resp_u8: np.ndarray, pos: int, n: int) -> None:
        """File the general path's response slots among ``n`` drained ones (ring bytes
        ``resp_u8`` from position ``pos``) into their requests; answer a request when it is
        complete. One compiled call splits the slots into runs of one request, one per run
        copies them (ingress._batch_kernels)."""
        now = time.monotonic_ns()
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

    def _default(self, p: _Pending, action: int, flag: int, code: int) -> None:
        """Fill every slot that has no decision yet with a default one (generation 0 marks
        an unanswered slot: real generations start at 1)."""
        todo = p.slots["generation"] == 0
        p.slots["action"][todo] = action
        p.slots["flags"][todo] |= np.uint8(flag)
        p.slots["error"][todo] = code
        p.slots["score"][todo] = 0.0
        p.remaining = 0

    def _expire(self) -> None:
        now = time.monotonic_ns()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, seq = heapq.heappop(self.deadlines)
            p = self.pending.get(seq)
            if p is None:
                continue
            lost = [w for w in p.workers if not self.alive[w]]
            flag, code = self.expiry(lost[0] if lost else p.workers[0], now - p.arrival_ns)
            self._default(p, self.timeout_action, flag, code)
            self._finish(p, int(code))

    def expiry(self, w: int, age: int) -> tuple[DecisionFlag, ErrorCode]:
        """A request on worker ``w`` (age ``age`` ns) passed its deadline: WORKER_LOST if the
        worker is gone, else TIMEOUT (logged); counted. Returns (decision flag, code)."""
        if not self.alive[w]:
            self.c_lost[0] += 1
            return DecisionFlag.DEFAULT_WORKER_LOST, ErrorCode.WORKER_LOST
        self.c_timeouts[0] += 1
        self._log_timeout(w, age)
        return DecisionFlag.DEFAULT_TIMEOUT, ErrorCode.TIMEOUT

    def _log_timeout(self, w: int, age: int) -> None:
        """One log entry per burst: [wall time of the first, worker, timeouts, oldest age ns,
        highest request-ring occupancy, wall time of the last]. A timeout within
        TIMEOUT_BURST_NS of the previous one for the same worker joins its entry."""
        occ = self.rings[w].request.occupancy()
        wall = time.time_ns()
        row = self.timeout_log.newest()
        if row is not None and row[1] == w and wall - row[5] < TIMEOUT_BURST_NS:
            row[2] += 1
            row[3] = max(int(row[3]), age)
            row[4] = max(int(row[4]), occ)
            row[5] = wall
        else:
            self.timeout_log.add(w, 1, age, occ, wall)

    def peer_done(self, peer: bytes) -> None:
        """One request of connection ``peer`` (its identity) is no longer in flight."""
        c = self.peer_inflight.pop(peer, 1) - 1
        if c:
            self.peer_inflight[peer] = c

    def _finish(self, p: _Pending, code: int) -> None:
        self.pending.pop(p.seq, None)
        if p.seq:                                  # admitted (not an overload default)
            self.peer_done(p.envelopes[0][0][0])
        fired = None
        if self.fired_lists:
            base = p.seq << EVENT_BITS
            fired = {i: self.fired_lists.pop(base + i) for i in range(len(p.slots)) if base + i in self.fired_lists}
            if fired and p.dedup_key is not None:
                self._keep_dup_fired(p.dedup_key, fired)
        for i, (env, req) in enumerate(p.envelopes):
            slots = p.slots
            if i:                                  # retries that arrived while in flight
                slots = slots.copy()
                slots["flags"] |= np.uint8(DecisionFlag.DUPLICATE)
            self.send_decision(env, req, slots, fired)
        t = _TRANSPORT[p.req.kind]
        now = time.monotonic_ns()
        if p.dedup_key is not None:
            self.dedup.finish(p.dedup_key, p.flat, now, owner=p, rhash=p.rhash)
        if not self.instrument:             # metrics.enabled: false (bench.metrics_overhead)
            return
        self.c_requests[t, code] += 1
        self._count_actions(p.raw, self.c_decisions)
        observe_request(self.c_eval[t], self.c_stage, LATENCY_BOUNDS_NS, p.arrival_ns,
                        p.routed_ns, p.first_resp_ns, now)

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

    def send_decision(self, envelope, req, slots: np.ndarray, fired: dict | None = None) -> None:
        """``fired``: decision index -> every fired rule index (JSON, more than MAX_FIRED)."""
        metas = None
        if req.kind == "json":
            metas = {g: self.meta(g) for g in set(slots["generation"].tolist())}
            metas = {g: m for g, m in metas.items() if m is not None}
        self.send_frames(envelope, self.codec.encode_reply(req, slots, metas, fired), req.kind)

    def send_frames(self, envelope, body, kind: str) -> None:
        """One send per frame with int flags (send_multipart with enum flags cost 3x here).
        A ROUTER drops what it cannot queue, so the Again branch is a safety net."""
        send = self._send
        try:
            for f in envelope:
                send(f, _MORE_NOWAIT)
            send(body, _NOWAIT)
        except zmq.Again:                          # the client stopped reading: drop, counted
            self.c_requests[_TRANSPORT[kind], int(ErrorCode.INTERNAL)] += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ingress.router")
    ap.add_argument("--run-dir", required=True)
    a = ap.parse_args(argv)
    procname.become_child("ingress")                  # the supervisor coordinates shutdown
    plan = rundir.read_plan(a.run_dir)
    pin_self(plan.get("ingress_cpu", -1))
    raise_nofile_limit()                              # connections are descriptors
    router = Router(a.run_dir)
    try:
        return router.run()
    except zmq.ZMQError as e:
        if router.sock is None:            # bind failed: one line, not a traceback
            print(f"risk-engine: ingress: cannot bind ingress.bind={router.cfg.ingress.bind!r}: {e}",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
