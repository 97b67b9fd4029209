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


async def create_placed(create, what: str, ready_s: float):
    """``await create()``, a call that creates a stream (a store, a bucket), retried while the
    meta leader refuses to place it for lack of peers (NO_PLACEMENT); raises StoreUnavailable
    after ``ready_s`` seconds. Other refusals are raised as they are."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_s
    while True:
        try:
            return await create()
        except jserr.BadRequestError as e:
            if e.err_code != NO_PLACEMENT:
                raise
            if loop.time() >= deadline:
                raise StoreUnavailable(f"{what}: {e.description} for {ready_s:g} s") from None
        await asyncio.sleep(0.2)


async def open_object_store(js, bucket: str, replicas: int, description: str, ready_s: float):
    """The object store ``bucket``, created (FILE storage, ``replicas``) when missing, once its
    stream has a leader; raises StoreUnavailable after ``ready_s`` seconds."""
    try:
        store = await js.object_store(bucket)
    except jserr.BucketNotFoundError:
        try:
            store = await create_placed(lambda: js.create_object_store(bucket, config=api.ObjectStoreConfig(
                description=description, replicas=replicas, storage=api.StorageType.FILE)),
                f"object store {bucket}", ready_s)
        except jserr.BadRequestError:            # created meanwhile by another node
            store = await js.object_store(bucket)
    await stream_led(js, f"OBJ_{bucket}", ready_s)
    return store


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
