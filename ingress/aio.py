"""asyncio client: ``await AsyncClient(endpoint).evaluate(event) -> Decision`` (zmq.asyncio).

Same frames, Lazy Pirate retry (close + reopen the REQ socket, resend the same ids with the
RETRY flag) and exceptions as ``ingress.client.Client``. Calls on one client are serialised by
an ``asyncio.Lock`` (a REQ socket has one request in flight); open several clients for
concurrency. The client belongs to the event loop it is first used on.
"""
from __future__ import annotations

import asyncio
import os

import zmq
import zmq.asyncio

from shm.schema import Schema
from ingress.client import (ClientCodec, ClientTimeout, CurveKeys, Decision, LazyPirateSocket,
                            RuleIds, load_schema)


class AsyncClient(LazyPirateSocket):
    def __init__(self, endpoint: str, schema: Schema | str | os.PathLike | None = None, *,
                 timeout_ms: int = 1000, retries: int = 3, transport: str = "binary",
                 deadline_ms: float = 0, curve: CurveKeys | None = None,
                 client_id: int | None = None, context: zmq.asyncio.Context | None = None):
        if timeout_ms <= 0 or retries < 0:
            raise ValueError(f"timeout_ms={timeout_ms} retries={retries}: need > 0 and >= 0")
        self.endpoint, self.timeout_ms, self.retries = endpoint, timeout_ms, retries
        self.deadline_ms, self.curve = deadline_ms, curve
        self.codec = ClientCodec(load_schema(schema), transport, client_id)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self.reconnects = 0

    @property
    def client_id(self) -> int:
        return self.codec.client_id

    async def evaluate(self, event: dict, *, timeout_ms: int | None = None,
                       deadline_ms: float | None = None) -> Decision:
        return (await self.evaluate_batch([event], timeout_ms=timeout_ms,
                                          deadline_ms=deadline_ms))[0]

    async def evaluate_batch(self, events, *, timeout_ms: int | None = None,
                             deadline_ms: float | None = None) -> list[Decision]:
        recs = self.codec.records(events)
        timeout_ms = timeout_ms or self.timeout_ms
        deadline_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        async with self._lock:
            rid = self.codec.new_request_id()
            for attempt in range(self.retries + 1):
                reply = await self._attempt(
                    self.codec.frame(recs, rid, deadline_ms, retry=attempt > 0), timeout_ms)
                if reply is not None:
                    return self.codec.parse(reply, rid, len(recs))
        raise ClientTimeout(self.endpoint, rid, self.retries + 1, timeout_ms)

    async def rule_ids(self, generation: int, *, timeout_ms: int | None = None) -> RuleIds:
        """As ``Client.rule_ids``: asked once per generation, then cached."""
        got = self.codec.rule_ids.get(generation)
        if got is not None:
            return got
        timeout_ms = timeout_ms or self.timeout_ms
        async with self._lock:
            rid = self.codec.new_request_id()
            frame = self.codec.rules_frame(rid, generation)
            for _ in range(self.retries + 1):
                reply = await self._attempt(frame, timeout_ms)
                if reply is not None:
                    got = self.codec.rule_ids[generation] = self.codec.parse_rules(
                        reply, rid, generation)
                    return got
        raise ClientTimeout(self.endpoint, rid, self.retries + 1, timeout_ms)

    async def _attempt(self, frame: bytes, timeout_ms: int) -> bytes | None:
        """As ``Client._attempt``: the reply, or None (socket dropped) after ``timeout_ms``."""
        sock = self._socket(timeout_ms)
        try:
            await sock.send(frame)
        except zmq.Again:
            pass
        else:
            if await sock.poll(timeout_ms, zmq.POLLIN):
                return await sock.recv()
        self._drop_socket()
        return None

    async def resolve(self, d: Decision) -> Decision:
        """As ``Client.resolve``: the rule ids of a binary decision's indexes."""
        if d.ruleset is not None or not d.generation:
            return d
        return self.codec.named(d, await self.rule_ids(d.generation))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
