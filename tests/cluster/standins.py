"""Stand-ins for cluster nodes' ingress in tests of the cluster client: real ZeroMQ ROUTER
sockets served by a thread, each request handed to the test's policy, which answers, holds,
repeats or refuses it (tests/cluster/test_cluster_batch.py, test_client_redirects.py)."""
from __future__ import annotations

import json
import threading

import numpy as np
import zmq

from ingress import wire
from ingress.admission import shard_of
from ingress.client import load_schema
from shm.types import ErrorCode
from tests.cluster.conftest import LEASE_BUCKET_PARTITIONS as P

DTYPE = load_schema(None).dtype          # the client's default schema, as the tests' clients use it


class StandIns:
    """``n`` ROUTER sockets on one thread; each request is handed to
    ``policy(self, node, envelope, request)`` (``Request``), which answers through ``send``."""

    def __init__(self, n: int, policy):
        self.policy, self.stop = policy, threading.Event()
        self.received: list[tuple[int, Request]] = []       # (node, request), in arrival order
        self.socks = [zmq.Context.instance().socket(zmq.ROUTER) for _ in range(n)]
        self.addrs = []
        for s in self.socks:
            s.linger = 0
            self.addrs.append(f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}")
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        while not self.stop.is_set():
            for s, _ in poller.poll(50):
                frames = s.recv_multipart()
                node, req = self.socks.index(s), Request(frames[-1])
                self.received.append((node, req))
                self.policy(self, node, frames[:-1], req)

    def send(self, node: int, envelope: list[bytes], frame: bytes) -> None:
        self.socks[node].send_multipart(envelope + [frame])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close(0)


class Request:
    """A request ``body`` as a stand-in reads it: ``rid``, ``retry`` (the RETRY flag; JSON has
    none), ``accounts`` (its events' account ids), ``partition``, ``records`` (the bytes
    after the header, binary only) and ``json``."""

    def __init__(self, body: bytes):
        self.body, self.json = body, body[:1] == b"{"
        if self.json:
            obj = json.loads(body)
            self.rid, self.retry, self.records = obj["request_id"], None, b""
            self.accounts = [e["account_id"] for e in obj["events"]]
        else:
            head = wire.REQUEST_HEADER.unpack_from(body)
            self.rid, self.retry = head[7], bool(head[2] & wire.HeaderFlag.RETRY)
            self.records = body[wire.REQUEST_HEADER_SIZE:]
            self.accounts = np.frombuffer(self.records, DTYPE)["account_id"].tolist()
        parts = set(shard_of(np.array(self.accounts, np.int64), P).tolist())
        assert len(parts) == 1, parts                      # one request per partition
        self.partition = parts.pop()

    def answer(self, scores=None) -> bytes:
        """Its decisions, each scored by its account id (or ``scores``)."""
        scores = [float(a) for a in self.accounts] if scores is None else scores
        if self.json:
            return json.dumps({"request_id": self.rid, "decisions": [
                {"action": "allow", "score": sc, "rules": [], "shadow_rules": [], "ruleset": "t@1"}
                for sc in scores]}).encode()
        d = np.zeros(len(scores), wire.DECISION_DTYPE)
        d["score"] = scores
        return wire.pack_reply_header(0, len(scores), self.rid) + d.tobytes()

    def refuse(self, code: ErrorCode = ErrorCode.OVERLOADED, message: str = "stand-in") -> bytes:
        return wire.pack_error_reply(self.rid, code, message)
