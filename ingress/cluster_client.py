"""The Python client's cluster mode: ``ClusterClient(servers).evaluate(event)`` sends each
request straight to its partition's owner (docs/CLUSTER.md, "Routing").

The partition map (partition -> owner's advertised address) is read from the lease bucket and
kept current by a KV watch on a background thread (ingress.partmap). A request's partition is
the engine's (ingress.admission.shard_of of the shard key, mod the bucket's partition count).
Per owner the client keeps one DEALER socket (ingress.cluster_batch); every request shares
the client's one client id and request-id sequence, so a request keeps its idempotency key
whichever node it reaches. One thread per client.

- A batch is split by partition: one request per partition present, each with its own
  request id, allocated once per call and kept across every retry and redirect; the
  decisions are returned in the events' order. A partition moves between nodes as a whole,
  so a sub-request's journal records (and the taker's window entry rebuilt from them) move
  together: a resend after a hand-over reaches a node that has the whole first decision.
  Split by owner, a request that timed out at an owner whose partitions then went to
  several nodes was split again under new ids and decided twice (issue 24). Every
  partition's request is sent to its owner before any reply is waited for, and the replies
  are matched by request id (ingress.cluster_batch): a batch waits for its owners together,
  not for one partition after the other; each request still costs its own work on both
  sides (docs/CLUSTER.md, "Routing", has the figures).
- NOT_OWNER (the map was stale): nothing was evaluated there; the reply names the owner, the
  client records it and sends the same request (same id) there (``max_redirects`` hops to
  another node per partition's request, then RequestError NOT_OWNER). ``owner=none``, a
  node naming itself, or a node naming one that already answered that request NOT_OWNER in
  this call (no node serves the partition now: a failover, a take-over still replaying, two
  nodes each naming the other): it waits (0.1 s, doubling to 0.5 s, or less:
  until the map shows a change of that partition's lease, such as the taker marking it
  ready, looked at every 20 ms) and asks the map's owner again, for up to
  ``failover_wait_s`` (then RequestError NOT_OWNER): a failover within the lease protocol's
  bound costs the caller latency, not a failed request.
- A timeout (Lazy Pirate, per request): the next attempt goes to the partition's owner as the
  map says then (a failover moves it), with the same request id and the RETRY flag.
- Any error ends the call; replies still to come for it are dropped by their request id.
"""
from __future__ import annotations

import os
import re

import numpy as np
import zmq

from shm.ownership import valid_address
from shm.schema import Schema, take_rows
from ingress.admission import shard_of
from ingress.client import Client, ClientCodec, CurveKeys, Decision, load_schema
from ingress.cluster_batch import BatchRun, OwnerSocket, SubRequest
from ingress.partmap import BUCKET, PartitionMap

MAX_REDIRECTS = 5
FAILOVER_WAIT_S = 15.0                # a lease TTL (2 s) + TTL/4 + a take-over, with margin
_NOT_OWNER = re.compile(r"partition=(\d+) owner=(\S+)")


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
        self._conns: dict[str, OwnerSocket] = {}    # owner's address -> its DEALER socket
        self._routes: dict[int, str] = {}          # partition -> owner address ("" unknown)
        self.redirects = 0                         # NOT_OWNER replies followed (tests, metrics)
        self.ignored_replies = 0                   # replies that answer no request in flight
        self._changes: dict[int, int] = {}         # partition -> lease values seen (wakes a wait)
        self.map = PartitionMap(servers, bucket, on_change=self._route, timeout_s=map_timeout_s,
                                credentials=credentials).start()
        self.partitions = self.map.partitions

    def _route(self, p: int, address: str) -> None:
        """The map's watch thread: a lease value of ``p`` (a take, a renewal, ready)."""
        self._routes[p] = address
        self._changes[p] = self._changes.get(p, 0) + 1    # this thread alone writes it

    @property
    def client_id(self) -> int:
        return self.codec.client_id

    def owner(self, p: int) -> str:
        """Where partition ``p``'s requests go now ("" unknown)."""
        return self._routes.get(p, "")

    def lease_values(self, p: int) -> int:
        """How many lease values of ``p`` the map has seen (a change wakes a failover wait)."""
        return self._changes.get(p, 0)

    def follow(self, message: str) -> bool:
        """A NOT_OWNER reply's message: records the owner it names (the node knows better
        than our map); False when it is not the documented form."""
        m = _NOT_OWNER.fullmatch(message)
        if m is None or int(m[1]) >= self.partitions:
            return False
        self.redirects += 1
        if valid_address(m[2]):
            self._routes[int(m[1])] = m[2]
        return True

    def conn(self, addr: str) -> OwnerSocket:
        """The DEALER socket to ``addr`` (made on first use)."""
        c = self._conns.get(addr)
        if c is None:
            c = self._conns[addr] = OwnerSocket(addr, self.curve, self._ctx)
        return c

    def partition_of(self, event: dict) -> int:
        return int(shard_of(self.codec.records([event])[self.key], self.partitions)[0])

    evaluate = Client.evaluate                     # one event: evaluate_batch below

    def evaluate_batch(self, events, *, timeout_ms: int | None = None,
                       deadline_ms: float | None = None) -> list[Decision]:
        """Decisions for a list of event dicts or an array of ``schema.dtype``, in order: one
        request per partition, each with a request id of its own, allocated here and kept
        across every retry and redirect (module doc: exactly once across a hand-over), all
        sent before any reply is waited for."""
        recs = self.codec.records(events)
        parts = shard_of(recs[self.key], self.partitions)
        if not len(recs):
            return []
        order = np.argsort(parts, kind="stable")           # events grouped by partition, in order
        cuts = np.flatnonzero(np.diff(parts[order])) + 1
        # rows as bytes: recs[idx] leaves the padding uninitialised (PROTOCOL.md: send zeros);
        # taken once, so every attempt of an id sends the same bytes
        subs = [SubRequest(int(parts[g[0]]), g, self.codec.new_request_id(), take_rows(recs, g))
                for g in np.split(order, cuts)]
        return BatchRun(self, subs, timeout_ms or self.timeout_ms,
                        self.deadline_ms if deadline_ms is None else deadline_ms).run(len(recs))

    def close(self) -> None:
        self.map.close()
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
