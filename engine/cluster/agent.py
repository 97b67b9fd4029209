"""The lease agent: takes, renews, balances and gives up this node's partition leases
(engine.cluster.leases), and keeps the node's OwnershipTable (engine.cluster.ownership) true.

It is asyncio (nats-py is) and the engine is synchronous, so a node runs it on a thread of its
own with its own event loop (engine.cluster.agentthread); the rest of the engine reads only the table,
whose deadlines expire by themselves, so a stalled agent withdraws its leases without running.
``python -m engine.cluster.agent_cli`` runs one as a process, printing its events as JSON lines
on stdout and its NATS connection's state changes on stderr (shm.runtime.nats_log; the tests
kill -9 and SIGSTOP such processes).

The protocol (docs/CLUSTER.md, "Lease protocol"), every time on this node's CLOCK_BOOTTIME:
- a holder stamps the clock before it sends a renewal; once the renewal is acknowledged it may
  serve until stamp + TTL - margin (margin = TTL/4), renewing every TTL/4;
- a contender stamps the clock when it first sees a revision of a lease (pushed by a KV
  watch: engine.cluster.leaseview); it may take the lease (a compare-and-set on that
  revision) once it has seen the revision unchanged for a full TTL, and it wakes at that
  instant rather than at its next tick;
- a renewal refused (the revision moved on) ends the lease at once; so does a deadline passed.
Since the holder's stamp precedes the write the contender later reads, the holder's validity
ends at least ``margin`` before the contender may write, without comparing two clocks.
"""
from __future__ import annotations

import asyncio
import secrets

import nats
import nats.errors

from engine.cluster.drain import Drain
from engine.cluster.leases import BUCKET, LeaseError, LeaseStore, encode
from engine.cluster.leaseview import LeaseView
from engine.cluster.members import Members, share
from engine.cluster.ownership import OwnershipTable, now_ns
from engine.cluster.unknown_writes import UnknownWrites
from shm.runtime.nats_auth import auth_options
from shm.runtime.nats_log import ConnectionLog

NS = 1_000_000_000
OPEN_TIMEOUT_S = 30.0       # servers just started elect a JetStream meta leader first
_RETRY = (nats.errors.Error, asyncio.TimeoutError, OSError)


class LeaseAgent:
    def __init__(self, servers, node: str, advertise: str, partitions: int, lease_ttl_s: float,
                 bucket: str = BUCKET, replicas: int | None = None, on_event=None,
                 table: OwnershipTable | None = None, open_timeout_s: float = OPEN_TIMEOUT_S,
                 prepare=None, on_end=None, credentials: str = "", journal_ok=None, log=None):
        self.servers, self.node, self.partitions = list(servers), node, partitions
        self.credentials = credentials          # the NATS credentials file (shm.runtime.nats_auth)
        self.open_timeout_s = open_timeout_s
        self.bucket = bucket
        self.replicas = replicas if replicas is not None else min(3, len(self.servers))
        self.advertise = advertise
        # a lease is taken "ready": false while prepare runs, renewed "ready": true once it
        # returned (what `cluster drain` waits for before it releases the next one)
        self.writer = secrets.token_hex(8)     # this run's id in every lease value it writes
        self.value, self.ready_value = (encode(node, advertise, r, self.writer) for r in (False, True))
        self.ttl_ns = int(lease_ttl_s * NS)
        self.margin_ns = self.ttl_ns // 4
        self.renew_ns = self.ttl_ns // 4
        self.tick_s = lease_ttl_s / 8
        self.table = table or OwnershipTable(partitions)
        self.on_event = on_event or (lambda ev: None)
        # log(line): the connection's state changes (shm.runtime.nats_log); default: stderr
        self.conn_log = ConnectionLog("risk-engine: cluster: lease agent", log)
        self.held: dict[int, tuple[int, int]] = {}      # p -> (revision, stamp of its write)
        self.view = LeaseView(partitions, self.ttl_ns, on_error=self._view_error)   # the leases, watched
        self.unknown = UnknownWrites(self.writer, self.ttl_ns)   # writes that raised: stored or not
        self.members = Members(self)                    # heartbeats (engine.cluster.members)
        self.store: LeaseStore | None = None
        # `cluster drain`, and journal_ok() False (a full disk): hand over (engine.cluster.drain)
        self.drain = Drain(self, journal_ok)
        # prepare(p, rev) -> bool, awaited after a take and before the table shows the lease
        # (engine.cluster.takeover: fence, snapshot, replay); False or an error: released
        self.prepare = prepare
        self.on_end = on_end or (lambda p: None)        # on_end(p): p no longer held (after clear)
        self.pending: dict[int, asyncio.Task] = {}      # p -> its prepare, running
        self.announce: set[int] = set()                 # prepared: renew now, marked ready
        self.stopped_ns = 0                             # when the last lease stopped being served

    def emit(self, ev: str, **kw) -> None:
        self.on_event({"ev": ev, "node": self.node, "t_ns": now_ns(), **kw})

    async def run(self, stop: asyncio.Event) -> None:
        # once connected it reconnects for ever (its leases lapse meanwhile); the first
        # connection is bounded, so a node whose servers are all unreachable fails to start
        nc = await asyncio.wait_for(nats.connect(
            self.servers, **auth_options(self.credentials), name=f"risk-engine {self.node}", connect_timeout=2,
            reconnect_time_wait=0.25, max_reconnect_attempts=-1,
            **self.conn_log.callbacks()), self.open_timeout_s)      # a line per state change
        watching = relay = beating = None
        try:
            self.store = LeaseStore(nc.jetstream(timeout=2.0), self.bucket, timeout_s=self.tick_s * 2)
            await self._open()
            watching = asyncio.ensure_future(self.view.follow(nc.jetstream(timeout=2.0), self.bucket, stop))
            relay = asyncio.ensure_future(self._relay(stop))
            self.emit("started", partitions=self.partitions, ttl_ns=self.ttl_ns)
            started, last_members, last_status = now_ns(), 0, 0
            while not stop.is_set():
                t = now_ns()
                if self.drain.check_journal():
                    last_members = 0                # a journal lost or back: heartbeat now
                if beating is not None and beating.done():
                    beating.result()                # an error not NATS's ends the agent
                    beating = None
                if beating is None and t - last_members >= self.ttl_ns:
                    # on a task of its own: a slow roster (a listing, a read per node) never
                    # holds up the renewals below
                    last_members = t
                    beating = asyncio.ensure_future(self._guard(self.members.beat()))
                self._adopt()
                await self._renew_due()
                await self._guard(self._scan_and_take(balance=t - started >= 2 * self.ttl_ns))
                if t - last_status >= self.ttl_ns:
                    last_status = t
                    self.emit("status", owned=self.table.owned(), live=self.members.live())
                await self._idle()
        finally:
            for task in (watching, relay, beating):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await self._leave()
            self.conn_log.closing()
            await nc.close()

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.view.wake.set()

    async def _idle(self) -> None:
        """Wait a tick, or less: until the first lease another node holds would expire (a
        take at that instant, not up to a tick later), a lease is freed, or stop."""
        wait_s = self.tick_s
        nxt = self.view.next_expiry_ns(self.held)
        if nxt is not None and nxt > now_ns():
            wait_s = min(wait_s, (nxt - now_ns()) / NS + 0.001)
        try:
            await asyncio.wait_for(self.view.wake.wait(), wait_s)
        except asyncio.TimeoutError:
            pass
        self.view.wake.clear()

    def _view_error(self, e: BaseException) -> None:
        self.emit("nats_error", error=f"lease watch: {type(e).__name__}: {e}")

    async def _open(self) -> None:
        deadline = now_ns() + int(self.open_timeout_s * NS)
        while True:
            try:
                await self.store.open(self.partitions, self.replicas)
                return
            except _RETRY as e:
                if now_ns() > deadline:
                    raise LeaseError(f"bucket={self.bucket}: not usable within {self.open_timeout_s:g} s: "
                                     f"{type(e).__name__}: {e}") from None
                await asyncio.sleep(0.25)

    async def _guard(self, coro) -> None:
        try:
            await coro
        except _RETRY as e:          # NATS unreachable for now: leases lapse on their own
            self.emit("nats_error", error=f"{type(e).__name__}: {e}")

    def _lose(self, p: int, reason: str) -> None:
        rev, _ = self.held.pop(p)
        self._unprepare(p)
        self.table.clear(p)
        self.on_end(p)
        self.view.forget(p)
        self.emit("lost", p=p, rev=rev, reason=reason)

    async def _renew_one(self, p: int, held_rev: int, value: bytes):
        stamp = now_ns()
        try:
            return p, stamp, await self.store.renew(p, value, held_rev)
        except _RETRY:
            self.unknown.wrote(p, stamp, held_rev)
            return p, stamp, -1

    async def _renew_due(self) -> None:
        t = now_ns()
        due = {p: rev for p, (rev, stamp) in self.held.items()
               if t - stamp >= self.renew_ns or p in self.announce}
        if not due:
            return
        marked = {p for p in due if p not in self.pending}     # renewed with the ready value
        done = {}
        for p, stamp, rev in await asyncio.gather(
                *(self._renew_one(p, r, self.ready_value if p in marked else self.value) for p, r in due.items())):
            if self.held.get(p, (None,))[0] != due[p]:
                # released or its prepare failed meanwhile: not ours to extend (a renewal
                # stored anyway leaves the lease to lapse after a TTL, served by nobody)
                continue
            if rev is None:
                if not await self._adopt_refused(p):
                    self._lose(p, "refused")
            elif rev < 0:
                if now_ns() >= self.held[p][1] + self.ttl_ns - self.margin_ns:
                    self._lose(p, "expired")       # not renewed in time: the table said so already
            else:
                self.unknown.forget(p)
                if p not in self.pending and p in marked:
                    self.announce.discard(p)
                done[p] = (rev, stamp)
        self._renewed(done)

    def _renewed(self, done: dict[int, tuple[int, int]]) -> None:
        """Renewals acknowledged (or adopted): p -> (revision, stamp); a partition still being
        prepared is not servable yet, its table stays clear."""
        for p in [p for p in done if p in self.pending]:
            self.held[p] = done.pop(p)
        if done:
            # the deadline is printed before it is set: a log never shows less than was served
            until = {p: stamp + self.ttl_ns - self.margin_ns for p, (_, stamp) in done.items()}
            self.emit("renewed", leases={p: [rev, until[p]] for p, (rev, _) in done.items()})
            for p, (rev, stamp) in done.items():
                self.held[p] = (rev, stamp)
                self.table.extend(p, rev, until[p])

    def _adopt(self) -> None:
        """Take as acknowledged each unknown write of this run the view shows stored
        (engine.cluster.unknown_writes)."""
        renewed = {}
        for p, rev, u in self.unknown.adoptable(self.view.entry, self.held):
            self.emit("adopted", p=p, rev=rev, stamp_ns=u.stamp_ns)
            if p in self.held:
                renewed[p] = (rev, u.stamp_ns)
            else:
                self._took(p, rev, u.stamp_ns, {"prev_rev": u.last, "seen_ns": u.seen_ns,
                                                 "cas_ns": u.stamp_ns, "free": u.free})
        self._renewed(renewed)

    async def _adopt_refused(self, p: int) -> bool:
        """A renewal of p refused while an earlier write of p is unknown: read p; True if that
        write was stored (adopted: the lease is still this node's)."""
        if p not in self.unknown.by_p:
            return False
        try:
            self.view.note(p, await self.store.read(p))
        except _RETRY:
            return False
        self._adopt()
        return p in self.held and self.held[p][0] >= self.view.entry(p).revision

    async def _take_one(self, p: int, last: int, free: bool = True) -> None:
        stamp = now_ns()
        seen_ns = self.view.first_seen(p)       # of `last`: the watch may deliver our take during the await
        try:
            rev = await self.store.take(p, self.value if self.prepare else self.ready_value, last)
        except _RETRY:
            self.unknown.wrote(p, stamp, last, seen_ns, free)
            return
        if rev is None:                             # changed meanwhile (or the watch is behind):
            self.view.forget(p)                     # read it now, a TTL from this read
            try:
                self.view.note(p, await self.store.read(p))
            except _RETRY:
                pass
            return
        self.unknown.forget(p)
        # seen_ns: first sight of revision `last`; cas_ns: the take sent (the failover timeline)
        self._took(p, rev, stamp, {"prev_rev": last, "seen_ns": seen_ns, "cas_ns": stamp, "free": free})

    def _took(self, p: int, rev: int, stamp: int, when: dict) -> None:
        until = stamp + self.ttl_ns - self.margin_ns
        self.held[p] = (rev, stamp)
        self.announce.discard(p)                    # left by an earlier holding of p
        if self.prepare is not None:
            self.emit("acquired", p=p, rev=rev, until_ns=0, **when)
            self.pending[p] = asyncio.ensure_future(self._prepare(p, rev))
            return
        self.emit("acquired", p=p, rev=rev, until_ns=until, **when)
        self.table.begin(p, rev, until)

    async def _prepare(self, p: int, rev: int) -> None:
        """Run ``prepare`` for a lease just taken; serve p only once it returned True and the
        lease is still held (then until the last renewal's deadline); else release it."""
        try:
            ok, why = bool(await self.prepare(p, rev)), "refused"
        except asyncio.CancelledError:
            raise
        except Exception as e:                     # a corrupt stream, NATS down: not servable
            ok, why = False, f"{type(e).__name__}: {e}"
        self.pending.pop(p, None)
        if p not in self.held:
            return
        cur, stamp = self.held[p]
        until = stamp + self.ttl_ns - self.margin_ns
        if ok and now_ns() < until:
            self.emit("ready", p=p, rev=cur, until_ns=until)
            self.table.begin(p, cur, until)
            self.announce.add(p)                   # a renewal marks it ready, sent now: clients
            self.view.wake.set()                   # and `cluster drain` wait for the flag
            return
        if ok:                                     # done, but no renewal acknowledged in time
            why = f"its lease was not renewed within {(self.ttl_ns - self.margin_ns) / 1e9:g} s"
        del self.held[p]
        self.on_end(p)                             # a fence may have been stored
        self.emit("prepare_failed", p=p, rev=cur, error=why)
        try:
            await self.store.release(p, cur)
        except _RETRY:
            pass                                   # lapses after a TTL

    def _unprepare(self, p: int) -> None:
        task = self.pending.pop(p, None)
        if task is not None:
            task.cancel()

    async def _scan_and_take(self, balance: bool) -> None:
        if not self.view.synced:
            return                                  # the watch has not delivered every lease yet
        entries = {p: self.view.entry(p) for p in range(self.partitions) if p not in self.held}
        if self.drain.active:
            await self.drain.step(entries)
            return
        t = now_ns()
        free, expired = [], []
        for p, e in entries.items():
            if e.value is None:
                free.append((p, e.revision))
            elif self.view.expired(p, t):
                expired.append((p, e.revision))     # unchanged for a full TTL on our clock
                self.members.lapsed[e.value.get("node")] = t
        target = share(self.partitions, self.members.live())     # without a node just found lapsed
        room = max(0, target - len(self.held))
        # expired leases are taken whatever the share (their partitions are unserved);
        # free ones only up to this node's share, so a joining node gets some
        takes, gone = expired + free[:room], {p for p, _ in expired}
        if takes:
            await asyncio.gather(*(self._take_one(p, last, p not in gone) for p, last in takes))
        if balance and len(self.held) > target:
            await self._release(max(self.held), target=target)

    async def _release(self, p: int, **why) -> None:
        rev = self._stop_serving(p)
        stopped = self.stopped_ns
        ok = await self.store.release(p, rev)
        self.emit("released", p=p, rev=rev, ok=ok, stopped_ns=stopped, **why)

    def _stop_serving(self, p: int) -> int:
        rev, _ = self.held.pop(p)
        self.unknown.forget(p)                      # released: nothing of it to adopt
        self._unprepare(p)
        self.table.clear(p)                         # stop serving before the lease is free
        self.stopped_ns = now_ns()                  # (a watching taker may take it before the emit)
        self.on_end(p)
        return rev

    def give_up(self, ps, done) -> None:
        """On the agent's loop: stop serving ``ps`` now, then release them (a take-over whose
        rows could not be made durable on this node: engine.cluster.handover); ``done`` (a
        threading.Event) is set once none of them is served."""
        async def free(p: int, rev: int, stopped: int) -> None:
            try:
                ok = await self.store.release(p, rev)
            except _RETRY:
                ok = False                          # lapses after a TTL
            self.emit("released", p=p, rev=rev, ok=ok, stopped_ns=stopped, why="not durable here")
        for p in [p for p in ps if p in self.held]:
            rev = self._stop_serving(p)
            asyncio.ensure_future(free(p, rev, self.stopped_ns))
        done.set()

    async def _leave(self) -> None:
        """Stop serving everything, then free the leases (best effort: what cannot be freed
        expires after a TTL)."""
        held, self.held = self.held, {}
        self.unknown.clear()
        for p in held:
            self._unprepare(p)
            self.table.clear(p)
            self.on_end(p)
        stopped = now_ns()
        if self.store is None:
            return
        try:
            await asyncio.wait_for(asyncio.gather(
                *(self.store.release(p, rev) for p, (rev, _) in held.items()),
                self.store.leave(self.node)), 2.0)
        except _RETRY:
            pass
        self.emit("stopped", released=sorted(held), stopped_ns=stopped)
