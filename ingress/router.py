"""The front door: one ROUTER socket, the request rings to the workers, the response rings back.

Started by the supervisor as ``python -m ingress.router --run-dir D``. One thread, one
epoll over the ROUTER socket's ZMQ_FD and the eventfd doorbell of the response rings; after
its last work it polls both for ``ingress.spin_us`` (yielding the CPU each round), then
sleeps in the epoll, so nothing spins while idle (ingress.idlewait). The router reads
messages, sheds load when the socket's queue does not empty, drains the response rings and
runs the deadlines; the requests themselves are taken by two paths with one admission
policy (ingress.admission):

- binary requests with one event, the latency-critical case, take a compiled fast path
  first (ingress.fastpath: a preallocated in-flight table, one compiled call per request and
  one per drained batch of responses);
- everything else, and anything the fast path declines, takes the general path
  (ingress.generalpath), which produces the precise error or answer.

Both share the limits, the idempotency window, the replies (ingress.replies), the timeouts
(ingress.timeouts) and the metrics. With ``ingress.compiled_loop: true`` the messages are read
by ingress.compiledloop instead: the fast path's requests are received, admitted and answered
in compiled code, and every other message reaches the same methods (shedding, paths).
"""
from __future__ import annotations

import argparse
import resource
import select
import sys
import time

import zmq

from shm.runtime import gcstats, procname, rundir
from shm.control import BLOCKS_EVERY_NS, N_CODES, OVERLOAD_REASONS, set_phase
from shm.rings import EngineRings
from shm.runtime.topology import pin_self
from shm.tokens import EPOCHS
from shm.types import ErrorCode, request_slot_dtype
from ingress.admission import DOORBELL_DEFER_NS, Admission, RingViews, Shards
from ingress.autoblock import AutoBlock, PeerRecv
from ingress.codec import Codec, frame_kind, peek_request_id
from ingress.compiledloop import CompiledLoop
from ingress.conns import SERVICE_EVERY_NS, Connections, effective_cap, raise_nofile_limit
from ingress.dedup import IdempotencyWindow
from ingress.discard import FrameDiscarder
from ingress.fastpath import FastPath
from ingress.generalpath import GeneralPath
from ingress.idlewait import CONNS, PythonIdle
from ingress.ownercheck import OwnerCheck
from ingress.replies import Replies
from ingress.sockopts import SockOpts, is_ipv6_bind
from ingress.timeouts import Timeouts
from ingress.warmup import warm_up
from ingress.window_feed import WindowFeed
from ingress.wire import WireError
from shm.doorbell import EventfdDoorbell
from shm.idle import SpinPayoff
from ingress.security import configure_server, stop_authenticator

READ_BATCH = 256                      # requests read before the responses get their turn
MAX_FRAMES = 4                        # frames kept of one message: identity, delimiter, body
                                      # and one more, to see there are too many
CLOSE_OVER_FRAMES = 1024              # a message of more frames is abuse, not a client's slip:
                                      # its connection is closed (ingress.conns)
SHED_AFTER_NS = 5_000_000             # a queue that has not emptied for 5 ms: shed
SHED_PEER_SHARE = 32                  # while shedding, a peer's messages read per SHED_AFTER_NS
                                      # that are still served; beyond, only its are shed
_NOWAIT = int(zmq.NOBLOCK)            # a plain int: the enum form costs 2.5 us per socket call
_BAD_FRAME = int(ErrorCode.BAD_FRAME)
_SHED = OVERLOAD_REASONS.index("shed")
SERVING_POLL_S = 0.005                # ready, waiting for the supervisor's "serving"


class Router:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.cfg = cfg = rundir.read_config(run_dir)
        plan = rundir.read_plan(run_dir)
        self.n_workers = len(plan["workers"])
        self.block, self._block_seg = rundir.attach_control(run_dir, cfg)
        self.phase = self.block.view("ingress.phase")
        set_phase(self.phase, "compiling")          # the paths bind (compile) their kernels
        self.efd = EventfdDoorbell(plan["eventfd"])
        self.rings = [EngineRings.attach(cfg, plan, w, self.efd) for w in range(self.n_workers)]
        self.response_rings = [r.response for r in self.rings]
        self.codec = codec = Codec(cfg.schema, cfg.ingress.max_batch, cfg.ingress.max_frame_bytes)
        slot_dtype = request_slot_dtype(cfg.schema.dtype)
        self.backlog_since = 0             # since when the socket queue has not emptied
        self.backlog_reads = 0             # requests read since then
        self.shed_reads: dict[bytes, int] = {}   # while shedding: messages per peer this round
        self.shed_round_end = 0
        self.spin_ns = cfg.ingress.spin_us * 1000
        dedup = IdempotencyWindow(cfg.ingress.dedup_window_s * 1_000_000_000,
                                  cfg.ingress.dedup_max_entries, cfg.ingress.dedup_max_bytes,
                                  meta=self.block.view("ingress.dedup_meta"))
        self.sock: zmq.Socket | None = None
        b = self.block
        epoch = (int(b.view("supervisor.ingress_restarts")[0]) + 1) % EPOCHS
        self.c_requests = b.view("ingress.requests").reshape(2, N_CODES)
        self.c_inflight = b.view("ingress.inflight")
        self.c_accepting = b.view("ingress.accepting")
        self.c_overloaded = b.view("ingress.overloaded")          # by OVERLOAD_REASONS
        self.stop = b.view("supervisor.stop")
        # the parts both paths share, each with its own small interface
        self.views = views = RingViews(self.rings, slot_dtype)
        self.admission = admission = Admission(cfg.ingress, epoch, views)
        shards = Shards(cfg.schema, self.n_workers)
        self.replies = replies = Replies(codec, run_dir, self.c_requests)
        timeouts = Timeouts(cfg.ingress, b, self.rings)
        self.fast = FastPath(cfg, b, codec, dedup, admission, shards, views, replies, timeouts)
        self.general = GeneralPath(cfg, b, self.rings, codec, dedup, admission, shards, views,
                                   replies, timeouts, self.fast)
        self.fast.owners = self.general.owners = OwnerCheck(cfg, plan) if cfg.cluster else None
        self.feed = WindowFeed(run_dir, dedup, b)     # decisions of partitions taken over
        # rules that block a source: the kernel map's descriptor, inherited (engine.supervisor)
        self.autoblock = self.general.autoblock = AutoBlock(plan.get("autoblock_fds", (-1, -1)),
                                                            b.view("ingress.autoblock"))
        self.loop, self.peer_recv = None, PeerRecv()   # compiled_loop: reads in compiled code
        if cfg.ingress.compiled_loop:
            self.loop = CompiledLoop(cfg, self.rings, self.fast, self.general, admission, shards,
                                     views, dedup, READ_BATCH, SHED_AFTER_NS)
            self.autoblock.msg = self.loop.msg     # its sender capture, switched by service()
            self.loop.py_messages = b.view("ingress.py_messages")

    # --- set-up ------------------------------------------------------------------------------

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
            configure_server(ctx, sock, curve)
        if is_ipv6_bind(self.cfg.ingress.bind):   # libzmq refuses tcp://[addr]:port without ZMQ_IPV6
            sock.setsockopt(zmq.IPV6, 1)
        sock.bind(self.cfg.ingress.bind)
        return sock

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        set_phase(self.phase, "warming")
        warm_up(self.codec, self.fast, self.general)
        # the start-up collection (~100 ms) before the socket binds: no request waits for it
        gcstats.freeze_after_warmup(self.block.view("ingress.gc_hist"))
        ctx = zmq.Context(io_threads=1)
        sock = self._socket(ctx)
        self.sock = sock
        self.opts = SockOpts(sock)
        self.replies.bind(sock)
        self.fast.bind_socket(sock.underlying)     # closed only after the loop below ends
        if self.loop is not None:
            print("risk-engine: ingress: ingress.compiled_loop=true: fast-path requests are "
                  "read, admitted and answered in compiled code", file=sys.stderr, flush=True)
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
        set_phase(self.phase, "ready")
        accepting = self._wait_serving()
        self.c_accepting[0] = int(accepting)
        fast, general, admission = self.fast, self.general, self.admission
        c_blocks, blocks_due = self.block.view("ingress.py_blocks"), 0
        payoff, idle_since = SpinPayoff(self.spin_ns), 0   # spin only while it pays
        idle = (self.loop.idle.attach(sock, ep, self.efd, conns_fd) if self.loop is not None
                else PythonIdle(self.response_rings, self.opts, ep, self.efd, conns_fd))
        while True:
            if accepting and self.stop[0]:         # stop: read no more requests; finish the rest
                accepting = False
                self.c_accepting[0] = 0
            if not accepting and not general.in_use and not fast.in_use:
                break
            got = self._read_requests(sock) if accepting else 0
            got += self._drain_responses()
            now = time.monotonic_ns()
            general.expire(now)
            fast.expire(now)
            self.c_inflight[0] = admission.inflight
            if now >= blocks_due:       # a per-message leak shows here (bench.alloc); the call
                c_blocks[0] = sys.getallocatedblocks()      # costs 0.5 us, 2.5 % of a batched
                blocks_due = now + BLOCKS_EVERY_NS          # run's loop when made every round
            if now >= conns_due:                   # connections: counted, capped (ingress.conns)
                self.conns.service(now)
                self.autoblock.service(now)        # capture switch, expired blocks (ingress.autoblock)
                self.feed.service()                # another node's decisions (ingress.window_feed)
                conns_due = now + SERVICE_EVERY_NS
            if got:
                if idle_since:                     # work after a wait: would a spin have
                    payoff.gap(now - idle_since)   # caught it?
                    idle_since = 0
                continue                           # busy: look again before sleeping
            idle_since = idle_since or now
            deadline = self._next_deadline()       # never answer a deadline late for a spin
            spin_end = min(now + self.spin_ns, deadline) if payoff.spin else 0
            if idle.wait(spin_end, deadline, accepting) & CONNS:   # ingress.idlewait
                conns_due = 0                      # a connection came or went
        ep.close()
        self.conns.close()
        sock.close(linger=1000)
        if self.cfg.ingress.curve.enabled:
            stop_authenticator(ctx)
        ctx.term()
        for r in self.rings:
            r.close()
        self.efd.close()
        self._block_seg.close()
        return 0

    def _wait_serving(self) -> bool:
        """Bound and warm: read no request before the supervisor announced "serving" (every
        process ready: engine.readiness); meanwhile libzmq queues what clients send. False:
        stopped first."""
        serving = self.block.view("supervisor.serving")
        while not serving[0]:
            if self.stop[0]:
                return False
            time.sleep(SERVING_POLL_S)
        return True

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
        return self.general.next_deadline(self.fast.next_deadline())

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
        if self.loop is not None:
            return self.loop.read(sock, self)
        n = 0
        rcvmore, recv = self.opts.rcvmore, sock.recv
        admit, handle, views = self.fast.admit, self.general.handle, self.views
        capture, self.fast.peer_now = self.autoblock.capture[0], 0   # block_source rules: senders
        while n < READ_BATCH:
            try:
                frames = [recv(_NOWAIT)]
            except zmq.Again:                      # the queue is empty
                self.backlog_since = 0             # (the next request starts afresh)
                break
            frames.append(self.peer_recv.recv(sock, self.fast) if capture else recv())   # identity + >= 1
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
                self.c_overloaded[_SHED] += 1
                self.replies.shed(frames)
            elif not admit(frames, t):
                handle(frames, t)
            n += 1
            if views.owed_since and t - views.owed_since > DOORBELL_DEFER_NS:
                views.ring_owed()
        views.ring_owed()                          # when the queue empties, or every call
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
        self.replies.error(env, WireError(
            ErrorCode.BAD_FRAME, f"a message of {n} frames: expected [identity, (empty,) body]",
            request_id=peek_request_id(body), kind=frame_kind(body)))

    def _drain_responses(self) -> int:
        if self.loop is not None:
            return self.loop.drain(self)
        got = 0
        for w, ring in enumerate(self.response_rings):
            got += self._drain_ring(w, ring)
        return got

    def _drain_ring(self, w: int, ring) -> int:
        """Worker ``w``'s responses until its ring is empty; returns how many."""
        got = 0
        deliver, general = self.fast.deliver, self.general
        while True:
            pos, n = ring.readable(ring.capacity)
            general.drain_fired(w)                 # after readable: covers these responses
            if n <= 0:
                return got
            if deliver(w, pos, n, time.monotonic_ns()):    # some belong to this path
                general.deliver(w, pos, n)
            ring.release(n)
            got += n


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

