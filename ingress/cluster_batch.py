"""One ``ClusterClient.evaluate_batch`` call in flight: every partition's request is sent to
its owner at once, and the replies are collected by request id (docs/CLUSTER.md, "Routing").

Per owner the client keeps one DEALER socket (``OwnerSocket``). A request leaves as
``["", body]`` and its reply comes back as ``["", reply]``: the envelope a REQ socket adds,
so the engine's ROUTER sees what a REQ client sends (docs/PROTOCOL.md section 1). All of a
call's requests to one owner are on that socket together, so a batch waits for its owners'
replies together instead of one partition's after the other.

A reply is taken by the request id in its header. It belongs to the sub-request with that id
whose outstanding attempt went to that owner's socket; any other reply is dropped and
counted (``ClusterClient.ignored_replies``): the reply to a request an earlier call stopped
waiting for when another of its requests failed, or a second reply to one already answered.
The ids come from the client's one sequence, so no two requests of a client share one. An
error reply naming no request (the engine could not read one) is raised as ``Client``
raises it; a frame that is no reply, or a message not shaped ``["", reply]``, raises
ProtocolError.

Each sub-request behaves as a single request of ``Client`` did:
- Lazy Pirate: an attempt not answered within ``timeout_ms`` (or whose send took that long)
  is sent again, same id and the RETRY flag, to the partition's owner as the map says then, at
  most ``retries`` more times, then ClientTimeout. The owner's socket is closed (linger 0) and
  reopened, as a REQ socket would be; the other requests outstanding on it are sent again on
  the new socket at once, RETRY flag set, not counted as attempts (they did not time out).
- NOT_OWNER: ingress.cluster_client's module doc; hops and waits are counted per
  sub-request, so one partition's redirects do not use up another's.
Any error ends the call at once. Its requests still in flight are left: they may still be
decided (sent one after the other, those before the one that failed were decided too), and
their replies are dropped by id when they come.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from shm.types import ErrorCode
from ingress.client import ClientTimeout, CurveKeys, Decision, LazyPirateSocket, ProtocolError, RequestError

REDIRECT_BACKOFF_S = 0.1              # first wait when no node serves a partition; doubles, to 0.5 s
MAX_BACKOFF_S = 0.5
CHANGE_TICK_S = 0.02                  # how often a waiting request looks at its partition's lease
DRAIN_MAX = 4096                      # replies read from one socket per wake-up (a bounded loop)


class OwnerSocket(LazyPirateSocket):
    """The DEALER socket to one owner: made on first use, dropped (linger 0) after a timeout."""
    SOCKET_TYPE = zmq.DEALER

    def __init__(self, endpoint: str, curve: CurveKeys | None, context: zmq.Context):
        self.endpoint, self.curve, self._ctx = endpoint, curve, context
        self._sock: zmq.Socket | None = None
        self.reconnects = 0

    def try_send(self, frame: bytes, timeout_ms: int) -> zmq.Socket | None:
        """Sends ``["", frame]``: the socket it left on, or None when the send took longer
        than ``timeout_ms`` (the socket is then dropped, as ``Client._attempt`` drops it)."""
        sock = self._socket(timeout_ms)
        try:
            sock.send(b"", zmq.SNDMORE)                # once the first part is queued, so is the rest
            sock.send(frame, copy=len(frame) < 65536)
        except zmq.Again:
            self._drop_socket()
            return None
        return sock

    @property
    def socket(self) -> zmq.Socket | None:
        return self._sock

    def drop(self) -> None:
        self._drop_socket()


@dataclass(eq=False)
class SubRequest:
    """One partition's request of a call; its id is kept across every attempt and redirect."""
    p: int
    idx: np.ndarray                   # the positions of its events in the batch
    rid: int
    rows: np.ndarray                  # its records, taken once: every attempt sends the same bytes
    sent_to: str = ""                 # the owner of its outstanding attempt ("": none outstanding)
    due: float = 0.0                  # monotonic s: that attempt times out, or the next one is sent
    seen: int = 0                     # p's lease values seen when it was last sent (wakes a wait)
    attempt: int = 0                  # sent since its last redirect (RETRY flag from the second)
    timeouts: int = 0                 # attempts timed out since its last redirect
    hops: int = 0                     # redirects followed to a node not asked yet
    waits: int = 0                    # waits for a failover
    waited_from: float = 0.0          # monotonic s of its first wait
    asked: set = field(default_factory=set)   # nodes that answered it NOT_OWNER


class BatchRun:
    """Sends ``subs`` and collects their decisions (module doc). ``cc``: the ClusterClient,
    for its map (``owner``, ``lease_values``, ``follow``), sockets (``conn``), codec and
    limits."""

    def __init__(self, cc, subs: list[SubRequest], timeout_ms: int, deadline_ms: float):
        self.cc, self.timeout_ms, self.deadline_ms = cc, timeout_ms, deadline_ms
        self.open = {s.rid: s for s in subs}           # not answered yet
        self.poller = zmq.Poller()
        self.polled: dict[zmq.Socket, str] = {}        # registered socket -> its owner's address
        self.next_due = 0.0                            # monotonic s of the next sweep (or earlier)

    def run(self, n: int) -> list[Decision]:
        out: list = [None] * n
        while self.open:
            now = time.monotonic()
            if now >= self.next_due:
                self._sweep(now)
            ms = max(0, math.ceil((self.next_due - time.monotonic()) * 1000))
            for sock, _ in self.poller.poll(ms):
                if sock in self.polled:                # not dropped by an earlier reply's redirect
                    self._drain(sock, out)
        return out

    def _sweep(self, now: float) -> None:
        """Sends what is due (first attempts, resends, the end of a wait or a lease change
        while waiting); times out what is due. A reply only removes a request, so between
        sweeps ``next_due`` may only be early, never late (``_at`` moves it earlier)."""
        for s in list(self.open.values()):
            if s.sent_to:
                if now >= s.due:
                    self._timed_out(s.sent_to, now)
            elif now >= s.due or self.cc.lease_values(s.p) != s.seen:
                self._send(s)
        self.next_due = min((s.due for s in self.open.values()), default=now)
        if any(not s.sent_to for s in self.open.values()):     # a failover wait: look at the map
            self.next_due = min(self.next_due, now + CHANGE_TICK_S)

    def _at(self, s: SubRequest, due: float) -> None:
        s.due = due
        self.next_due = min(self.next_due, due)

    def _send(self, s: SubRequest) -> None:
        addr = self.cc.owner(s.p)
        s.seen = self.cc.lease_values(s.p)             # before it leaves: a change meanwhile wakes a wait
        if not addr:
            return self._redirected(s, f"partition={s.p} owner=none", "")
        conn = self.cc.conn(addr)
        old = conn.socket
        sock = conn.try_send(self.cc.codec.frame(s.rows, s.rid, self.deadline_ms, s.attempt > 0),
                             self.timeout_ms)
        s.attempt += 1
        if sock is None:                               # the send timed out: the socket is gone
            self._forget(old, addr)
            self._count_timeout(s, addr)
            return self._at(s, time.monotonic())
        if sock not in self.polled:
            self.poller.register(sock, zmq.POLLIN)
            self.polled[sock] = addr
        s.sent_to = addr
        self._at(s, time.monotonic() + self.timeout_ms / 1000)

    def _timed_out(self, addr: str, now: float) -> None:
        """Lazy Pirate: every attempt outstanding at ``addr`` whose time is up counts; the
        owner's socket is closed and reopened, and everything that was outstanding on it is
        sent again."""
        for o in self.open.values():
            if o.sent_to == addr and o.due <= now:
                self._count_timeout(o, addr)
        conn = self.cc.conn(addr)
        self._forget(conn.socket, addr)
        conn.drop()

    def _count_timeout(self, s: SubRequest, addr: str) -> None:
        s.timeouts += 1
        if s.timeouts > self.cc.retries:
            raise ClientTimeout(self.cc.owner(s.p) or addr or "?", s.rid, self.cc.retries + 1, self.timeout_ms)

    def _forget(self, sock: zmq.Socket | None, addr: str) -> None:
        """``sock`` (``addr``'s) is being dropped: unpoll it; what was outstanding on it goes again now."""
        if sock is not None and sock in self.polled:
            self.poller.unregister(sock)
            del self.polled[sock]
        now = time.monotonic()
        for o in self.open.values():
            if o.sent_to == addr:
                o.sent_to = ""
                self._at(o, now)

    def _drain(self, sock: zmq.Socket, out: list) -> None:
        addr = self.polled[sock]
        for _ in range(DRAIN_MAX):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or frames[0]:
                raise ProtocolError(f"reply from {addr}: {len(frames)} frame(s), expected an empty "
                                    f"delimiter and the reply")
            self._reply(addr, frames[1], out)
            if sock not in self.polled:                # a redirect's send dropped it
                return

    def _reply(self, addr: str, frame: bytes, out: list) -> None:
        codec = self.cc.codec
        rid = codec.reply_id(frame)
        s = self.open.get(rid)
        if s is None or s.sent_to != addr:
            if rid == 0:                               # an error naming no request: raised as Client does
                codec.parse(frame, 0, 0)
            self.cc.ignored_replies += 1
            return
        try:
            got = codec.parse(frame, rid, len(s.rows))
        except RequestError as e:
            if e.code != ErrorCode.NOT_OWNER or not self.cc.follow(e.message):
                raise
            return self._redirected(s, e.message, addr)
        del self.open[rid]
        for i, d in zip(s.idx.tolist(), got):
            out[i] = d

    def _redirected(self, s: SubRequest, message: str, asked: str) -> None:
        """NOT_OWNER from ``asked`` ("": the map names nobody): follow the owner the map names
        now, or wait for a failover (ingress.cluster_client's module doc). The same id: an
        earlier attempt that timed out may have been decided, and the next owner answers that
        decision from its window (docs/CLUSTER.md)."""
        s.sent_to, s.attempt, s.timeouts = "", 0, 0
        named = self.cc.owner(s.p)
        s.asked.add(asked)
        if named and named not in s.asked and "owner=none" not in message:   # a new node: follow
            s.hops += 1
            if s.hops > self.cc.max_redirects:
                raise RequestError(ErrorCode.NOT_OWNER, f"{message}; gave up after {s.hops - 1} "
                                   f"redirect(s) (max_redirects={self.cc.max_redirects})")
            return self._send(s)
        now = time.monotonic()           # nobody serves it now (none named, or nodes naming each other)
        s.waited_from = s.waited_from or now
        if now - s.waited_from > self.cc.failover_wait_s:
            raise RequestError(ErrorCode.NOT_OWNER, f"{message}; no node served the partition "
                               f"within failover_wait_s={self.cc.failover_wait_s:g}")
        self._at(s, now + min(MAX_BACKOFF_S, REDIRECT_BACKOFF_S * 2 ** s.waits))
        self.next_due = min(self.next_due, now + CHANGE_TICK_S)
        s.waits += 1
