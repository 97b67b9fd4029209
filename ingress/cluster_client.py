"""The Python client's cluster mode: ``ClusterClient(servers).evaluate(event)`` sends each
request straight to its partition's owner (docs/CLUSTER.md, "Routing").

The partition map (partition -> owner's advertised address) is read from the lease bucket and
kept current by a KV watch on a background thread (ingress.partmap). A request's partition is
the engine's (ingress.admission.shard_of of the shard key, mod the bucket's partition count).
Per owner the client keeps one ``Client`` (Lazy Pirate: timeout, close, reopen, resend the
same ids); all of them share one client id and one request-id sequence, so a request keeps
its idempotency key whichever node it reaches.

- A batch is split by partition: one request per partition present, each with its own
  request id, allocated once per call and kept across every retry and redirect; the
  decisions are returned in the events' order. A partition moves between nodes as a whole,
  so a sub-request's journal records (and the taker's window entry rebuilt from them) move
  together: a resend after a hand-over reaches a node that has the whole first decision.
  Split by owner, a request that timed out at an owner whose partitions then went to
  several nodes was split again under new ids and decided twice (issue 24). The cost: a
  batch spanning k partitions is k sequential round trips (docs/CLUSTER.md, "Routing").
- NOT_OWNER (the map was stale): nothing was evaluated there; the reply names the owner, the
  client records it and sends the same request (same id) there (``max_redirects`` hops to
  another node per call, then RequestError NOT_OWNER). ``owner=none``, a node naming itself,
  or a node naming one that already answered NOT_OWNER in this call (no node serves the
  partition now: a failover, a take-over still replaying, two nodes each naming the other): it
  waits (REDIRECT_BACKOFF_S, doubling to 0.5 s, or less: until the map shows a change of
  that partition's lease, such as the taker marking it ready) and asks the map's owner
  again, for up to
  ``failover_wait_s`` per call (then RequestError NOT_OWNER): a failover within the lease
  protocol's bound costs the caller latency, not a failed request.
- A timeout: the next attempt goes to the partition's owner as the map says then (a failover
  moves it), with the same request id and the RETRY flag.
"""
from __future__ import annotations

import os
import re
import threading
import time

import numpy as np
import zmq

from shm.ownership import valid_address
from shm.schema import Schema, take_rows
from shm.types import ErrorCode
from ingress.admission import shard_of
from ingress.client import Client, ClientCodec, ClientTimeout, CurveKeys, Decision, RequestError, load_schema
from ingress.partmap import BUCKET, PartitionMap

MAX_REDIRECTS = 5
REDIRECT_BACKOFF_S = 0.1              # first wait when no node serves a partition; doubles, to 0.5 s
FAILOVER_WAIT_S = 15.0                # a lease TTL (2 s) + TTL/4 + a take-over, with margin
_NOT_OWNER = re.compile(r"partition=(\d+) owner=(\S+)")


class _Redirect(Exception):
    def __init__(self, message: str, asked: str):
        super().__init__(message)
        self.asked = asked                         # the address that answered ("" none asked)


class ClusterClient:
    """Routes requests by partition (module doc). ``servers``: the NATS URLs of the cluster;
    ``credentials``: the NATS credentials file (shm.runtime.nats_auth; reading the lease bucket
    is all the client does, so a read-only user is enough); the other arguments as
    ``ingress.client.Client``'s, per attempt."""

    def __init__(self, servers, schema: Schema | str | os.PathLike | None = None, *,
                 bucket: str = BUCKET, timeout_ms: int = 1000, retries: int = 3,
                 transport: str = "binary", deadline_ms: float = 0, curve: CurveKeys | None = None,
                 client_id: int | None = None, context: zmq.Context | None = None,
                 max_redirects: int = MAX_REDIRECTS, map_timeout_s: float = 10.0,
                 failover_wait_s: float = FAILOVER_WAIT_S, credentials: str = ""):
        if timeout_ms <= 0 or retries < 0 or max_redirects < 0 or failover_wait_s < 0:
            raise ValueError(f"timeout_ms={timeout_ms} retries={retries} max_redirects={max_redirects} "
                             f"failover_wait_s={failover_wait_s}: need > 0, >= 0, >= 0 and >= 0")
        self.timeout_ms, self.retries, self.max_redirects = timeout_ms, retries, max_redirects
        self.failover_wait_s = failover_wait_s
        self.transport, self.deadline_ms, self.curve = transport, deadline_ms, curve
        self.codec = ClientCodec(load_schema(schema), transport, client_id)
        self.key = self.codec.schema.shard_key
        self._ctx = context or zmq.Context.instance()
        self._conns: dict[str, Client] = {}
        self._routes: dict[int, str] = {}          # partition -> owner address ("" unknown)
        self.redirects = 0                         # NOT_OWNER replies followed (tests, metrics)
        self._changes: dict[int, int] = {}         # partition -> lease values seen (wakes a wait)
        self._changed = threading.Condition()
        self.map = PartitionMap(servers, bucket, on_change=self._route, timeout_s=map_timeout_s,
                                credentials=credentials).start()
        self.partitions = self.map.partitions

    def _route(self, p: int, address: str) -> None:
        """The map's watch thread: a lease value of ``p`` (a take, a renewal, ready)."""
        self._routes[p] = address
        with self._changed:
            self._changes[p] = self._changes.get(p, 0) + 1
            self._changed.notify_all()

    def _wait_change(self, p: int, seen: int, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, less if p's lease changes from ``seen`` values."""
        with self._changed:
            self._changed.wait_for(lambda: self._changes.get(p, 0) != seen, timeout_s)

    @property
    def client_id(self) -> int:
        return self.codec.client_id

    def owner(self, p: int) -> str:
        """Where partition ``p``'s requests go now ("" unknown)."""
        return self._routes.get(p, "")

    def partition_of(self, event: dict) -> int:
        return int(shard_of(self.codec.records([event])[self.key], self.partitions)[0])

    evaluate = Client.evaluate                     # one event: evaluate_batch below

    def evaluate_batch(self, events, *, timeout_ms: int | None = None,
                       deadline_ms: float | None = None) -> list[Decision]:
        """Decisions for a list of event dicts or an array of ``schema.dtype``, in order: one
        request per partition, each with a request id of its own, allocated here and kept
        across every retry and redirect (module doc: exactly once across a hand-over)."""
        recs = self.codec.records(events)
        parts = shard_of(recs[self.key], self.partitions)
        timeout_ms = timeout_ms or self.timeout_ms
        deadline_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        out: list = [None] * len(recs)
        if not len(recs):
            return out
        order = np.argsort(parts, kind="stable")           # events grouped by partition, in order
        cuts = np.flatnonzero(np.diff(parts[order])) + 1
        subs = [(int(parts[g[0]]), g, self.codec.new_request_id()) for g in np.split(order, cuts)]
        call = {"hops": 0, "waits": 0, "from": 0.0, "asked": set()}
        for p, idx, rid in subs:
            # rows as bytes: recs[idx] leaves the padding uninitialised (PROTOCOL.md: send
            # zeros); taken once, so every attempt of this id sends the same bytes
            for i, d in zip(idx.tolist(), self._send(take_rows(recs, idx), p, rid, timeout_ms,
                                                     deadline_ms, call)):
                out[i] = d
        return out

    def _send(self, rows: np.ndarray, p: int, rid: int, timeout_ms: int, deadline_ms: float,
              call: dict) -> list[Decision]:
        """Partition ``p``'s request ``rid``, following NOT_OWNER (``call``: this call's hops,
        waits and the nodes that answered NOT_OWNER)."""
        while True:
            seen = self._changes.get(p, 0)
            try:
                return self._request(rows, p, timeout_ms, deadline_ms, rid)
            except _Redirect as r:
                named = self.owner(p)
                call["asked"].add(r.asked)
                if named and named not in call["asked"] and "owner=none" not in str(r):  # a new node: follow
                    call["hops"] += 1
                    if call["hops"] > self.max_redirects:
                        raise RequestError(ErrorCode.NOT_OWNER, f"{r}; gave up after {call['hops'] - 1} "
                                           f"redirect(s) (max_redirects={self.max_redirects})") from None
                else:     # nobody serves it now (none named, or nodes naming each other): a failover
                    now = time.monotonic()
                    call["from"] = call["from"] or now
                    if now - call["from"] > self.failover_wait_s:
                        raise RequestError(ErrorCode.NOT_OWNER, f"{r}; no node served the partition "
                                           f"within failover_wait_s={self.failover_wait_s:g}") from None
                    self._wait_change(p, seen, min(0.5, REDIRECT_BACKOFF_S * 2 ** call["waits"]))
                    call["waits"] += 1
                # the same id: an earlier attempt that timed out may have been decided, and
                # the next owner answers that decision from its window (docs/CLUSTER.md)

    def _request(self, recs: np.ndarray, p: int, timeout_ms: int, deadline_ms: float,
                 rid: int) -> list[Decision]:
        """One request (all of ``recs`` to partition ``p``'s owner, request id ``rid``) with
        Lazy Pirate retries."""
        for attempt in range(self.retries + 1):
            addr = self.owner(p)
            if not addr:
                raise _Redirect(f"partition={p} owner=none", "")
            reply = self._conn(addr)._attempt(self.codec.frame(recs, rid, deadline_ms, attempt > 0),
                                              timeout_ms)
            if reply is None:
                continue
            try:
                return self.codec.parse(reply, rid, len(recs))
            except RequestError as e:
                if e.code != ErrorCode.NOT_OWNER:
                    raise
                m = _NOT_OWNER.fullmatch(e.message)
                if m is None or int(m[1]) >= self.partitions:
                    raise
                self.redirects += 1
                if valid_address(m[2]):            # the node knows better than our map
                    self._routes[int(m[1])] = m[2]
                raise _Redirect(e.message, addr) from None
        raise ClientTimeout(self.owner(p) or "?", rid, self.retries + 1, timeout_ms)

    def _conn(self, addr: str) -> Client:
        c = self._conns.get(addr)
        if c is None:
            c = self._conns[addr] = Client(addr, self.codec.schema, timeout_ms=self.timeout_ms,
                                           retries=0, transport=self.transport, curve=self.curve,
                                           context=self._ctx)
            c.codec = self.codec                   # one client id and request-id sequence
        return c

    def close(self) -> None:
        self.map.close()
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
