"""Opening JetStream stores that may not exist yet (object stores, KV buckets), and waiting
until they can be used.

Each store is a stream (``OBJ_<bucket>``, ``KV_<bucket>``). Right after an R3 stream is
created, its Raft group has no leader yet. Until it elects one, a write is answered "no
responders" (nats-py raises NoStreamResponseError). Creating one right after a server came
back is refused "no suitable peers for placement" until the meta leader hears from that server
again. Both waits are bounded, and a store that stays unusable is reported, not retried
forever.
"""
from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors as jserr
from nats.js import api

READY_S = 30.0          # the default wait for a store just created to be usable
NO_PLACEMENT = 10005     # err_code: "no suitable peers for placement"
_NOT_YET = (nats.errors.TimeoutError, nats.errors.NoRespondersError, jserr.NoStreamResponseError,
            jserr.ServiceUnavailableError, asyncio.TimeoutError)


class StoreUnavailable(RuntimeError):
    """The store's stream cannot be placed, or has no leader, within the wait."""


async def settled(call, what: str, ready_s: float):
    """``await call()``, a call that opens or creates a stream (a store, a bucket), retried
    while JetStream is settling: no answer, no responders, temporarily unavailable (a meta
    leader being elected, a server busy), or placement refused for lack of peers
    (NO_PLACEMENT); raises StoreUnavailable after ``ready_s`` seconds. Other refusals are
    raised as they are. ``call`` is safe to repeat: creating a stream that exists with the same
    configuration succeeds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_s
    while True:
        try:
            return await call()
        except jserr.BadRequestError as e:
            if e.err_code != NO_PLACEMENT:
                raise
            why = e.description
        except _NOT_YET as e:
            why = type(e).__name__
        if loop.time() >= deadline:
            raise StoreUnavailable(f"{what}: {why} for {ready_s:g} s")
        await asyncio.sleep(0.2)


async def opened(js, stream: str, open_, create, missing, what: str, ready_s: float):
    """``await open_()``; when it raises ``missing``, ``await create()`` (another node may have
    created it meanwhile: then opened again). All of it retried while JetStream settles
    (``settled``); returns once ``stream`` has a leader (``stream_led``). Raises
    StoreUnavailable after ``ready_s`` seconds of either wait."""
    async def once():
        try:
            return await open_()
        except missing:
            try:
                return await create()
            except jserr.BadRequestError as e:
                if e.err_code == NO_PLACEMENT:
                    raise
                return await open_()            # created meanwhile by another node
    got = await settled(once, what, ready_s)
    await stream_led(js, stream, ready_s)
    return got


async def open_object_store(js, bucket: str, replicas: int, description: str, ready_s: float):
    """The object store ``bucket``, created (FILE storage, ``replicas``) when missing, once its
    stream has a leader; raises StoreUnavailable after ``ready_s`` seconds."""
    return await opened(js, f"OBJ_{bucket}", lambda: js.object_store(bucket),
                        lambda: js.create_object_store(bucket, config=api.ObjectStoreConfig(
                            description=description, replicas=replicas, storage=api.StorageType.FILE)),
                        jserr.BucketNotFoundError, f"object store {bucket}", ready_s)


async def stream_led(js, stream: str, ready_s: float) -> None:
    """Return once ``stream`` reports a leader (a single server's stream has no cluster info
    and is its own leader); raises StoreUnavailable after ``ready_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline, why = loop.time() + ready_s, "no answer"
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
            why = "no leader elected"
        except _NOT_YET as e:
            why = f"{type(e).__name__}"
        if loop.time() >= deadline:
            raise StoreUnavailable(f"stream {stream}: {why} within {ready_s:g} s")
        await asyncio.sleep(0.1)
