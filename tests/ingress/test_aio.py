"""asyncio client against the real ROUTER decision server."""
import asyncio

import pytest
import zmq.asyncio

from shm.schema import Schema
from shm.types import ErrorCode
from ingress import wire
from ingress.aio import AsyncClient
from ingress.client import ClientTimeout, RequestError
from tests.ingress.decision_server import DecisionServer
from tests.ingress.wire_helpers import SCHEMA, event, make_codec


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("transport", ["binary", "json"])
def test_async_evaluate_and_concurrent_calls(transport):
    async def main(endpoint):
        ctx = zmq.asyncio.Context()
        try:
            c = AsyncClient(endpoint, SCHEMA, transport=transport, timeout_ms=5000, context=ctx)
            d = await c.evaluate(event(y_f64=81.0))
            many = await asyncio.gather(*(c.evaluate(event(i, y_f64=float(i)))
                                          for i in range(20)))
            batch = await c.evaluate_batch([event(i, y_f64=60.0) for i in range(3)])
            c.close()
            return d, many, batch
        finally:
            ctx.term()

    with DecisionServer(make_codec()) as server:
        d, many, batch = run(main(server.endpoint))
    assert d.action == "block"
    assert [x.score for x in many] == [float(i) for i in range(20)]
    assert [x.action for x in batch] == ["review"] * 3
    assert sorted(s[1] for s in server.seen) == list(range(1, 23))


def test_async_lazy_pirate_keeps_ids_then_times_out():
    async def main(endpoint):
        ctx = zmq.asyncio.Context()
        try:
            c = AsyncClient(endpoint, SCHEMA, timeout_ms=120, retries=1, client_id=8, context=ctx)
            d = await c.evaluate(event(y_f64=10.0))          # first attempt dropped
            with pytest.raises(ClientTimeout):
                await c.evaluate(event())                      # both attempts dropped
            c.close()
            return d, c.reconnects
        finally:
            ctx.term()

    retry = int(wire.HeaderFlag.RETRY)
    with DecisionServer(make_codec(), drop={0, 2, 3}) as server:
        d, reconnects = run(main(server.endpoint))
    assert d.action == "allow" and reconnects == 3
    assert server.seen == [(8, 1, 0), (8, 1, retry), (8, 2, 0), (8, 2, retry)]


def test_async_error_reply():
    other = Schema.build({"id": "u64", "y_f64": "f64"}, "id")

    async def main(endpoint):
        ctx = zmq.asyncio.Context()
        try:
            c = AsyncClient(endpoint, other, timeout_ms=5000, context=ctx)
            with pytest.raises(RequestError) as ei:
                await c.evaluate({"id": 1, "y_f64": 2.0})
            c.close()
            return ei.value
        finally:
            ctx.term()

    with DecisionServer(make_codec()) as server:
        e = run(main(server.endpoint))
    assert e.code == ErrorCode.SCHEMA_MISMATCH and e.request_id == 1
