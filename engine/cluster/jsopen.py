"""Opening JetStream stores that may not exist yet (object stores, KV buckets), and waiting
until they can be used.

Each store is a stream (``OBJ_<bucket>``, ``KV_<bucket>``). Right after an R3 stream is
created, its Raft group has no leader yet. Until it elects one, a write is answered "no
responders" (nats-py raises NoStreamResponseError). The wait here is bounded, and a store that
stays without a leader is reported, not retried forever.
"""
from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors as jserr
from nats.js import api

_NOT_YET = (nats.errors.TimeoutError, nats.errors.NoRespondersError, jserr.NoStreamResponseError,
            jserr.ServiceUnavailableError, asyncio.TimeoutError)


class StoreUnavailable(RuntimeError):
    """The object store's stream has no leader within the wait."""


async def open_object_store(js, bucket: str, replicas: int, description: str, ready_s: float):
    """The object store ``bucket``, created (FILE storage, ``replicas``) when missing, once its
    stream has a leader; raises StoreUnavailable after ``ready_s`` seconds."""
    try:
        store = await js.object_store(bucket)
    except jserr.BucketNotFoundError:
        try:
            store = await js.create_object_store(bucket, config=api.ObjectStoreConfig(
                description=description, replicas=replicas, storage=api.StorageType.FILE))
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
