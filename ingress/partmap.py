"""The partition map: partition -> its lease holder's advertised address, read from the lease
bucket in NATS JetStream KV and kept current by a KV watch (docs/CLUSTER.md, "Routing").

The lease bucket's names live here (engine.cluster.leases writes the leases; this reads them):
key ``p.N`` per partition holding ``{"node", "advertise", "ready"}`` (``ready``: the holder
serves it, its take-over done; absent in values written by older nodes), ``meta`` holding the
partition count. A value is checked (shm.ownership.valid_address) before it is believed:
whoever can write NATS can write the bucket, and a client dials what it says.

nats-py is asyncio; the client and the engine node are synchronous, so ``PartitionMap`` runs
the watch on a daemon thread with its own event loop. Every NATS call has a timeout; once the
first map is read the watch reconnects for ever (a map that stops changing is only stale: a
stale owner answers NOT_OWNER naming the new one).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading

from shm.ownership import valid_address
from shm.runtime.nats_auth import auth_options
from shm.runtime.nats_log import ConnectionLog

BUCKET = "risk_engine_leases"
# the map's reply subjects: a read-only user is let subscribe to these alone, not to _INBOX.>
# where the engine's JetStream replies (journal records, control values) arrive
INBOX_PREFIX = "_INBOX_MAP"
LEASE_PREFIX = "p."
WATCH_ALL = ">"                      # the leases and ``meta`` (caught_up)
_OPS_GONE = ("DEL", "PURGE")


class PartitionMapError(RuntimeError):
    """The map cannot be read (no server answered, no bucket, no meta entry)."""


async def watch_all(js, bucket: str):
    """(the bucket's KeyValue, a watch over all its keys, the stream's last sequence when the
    watch began): see caught_up."""
    kv = await js.key_value(bucket)
    last = (await js.stream_info(f"KV_{bucket}")).state.last_seq
    return kv, await kv.watch(WATCH_ALL), last


def caught_up(u, last: int) -> bool:
    """True for the update of ``watch_all``'s watch that completes the values current when it
    began: an entry at or after the stream's last sequence then, with nothing pending after it
    (the message at that sequence is the last of its key, so the watch delivers it). nats-py's
    None marker is not used: it is sent when the consumer reports nothing pending while the
    subscription has received nothing, which is also so while the values are on their way
    through another server of the cluster, so it can come before them."""
    return u is not None and u.delta == 0 and u.revision >= last


def lease_key(p: int) -> str:
    return f"{LEASE_PREFIX}{p}"


def encode(node: str, advertise: str, ready: bool | None = None, writer: str | None = None) -> bytes:
    """``writer``: the writing agent's id, random per run (engine.cluster.unknown_writes)."""
    v = {"node": node, "advertise": advertise}
    if ready is not None:
        v["ready"] = ready
    if writer is not None:
        v["w"] = writer
    return json.dumps(v, separators=(",", ":")).encode()


def decode(data: bytes) -> dict:
    """A lease value: {"node", "advertise", "ready"}, ``ready`` None when the writer predates
    the flag, and "w" (the writer's id) when it is a string. A malformed one (a "ready" not a
    bool included) is reported as held by '?' and not ready (it is still a lease: its revision
    fences, and it expires like any other)."""
    try:
        v = json.loads(data)
        if isinstance(v, dict) and isinstance(v.get("node"), str) \
                and isinstance(v.get("advertise"), str) and isinstance(v.get("ready", False), bool):
            out = {"node": v["node"], "advertise": v["advertise"], "ready": v.get("ready")}
            if isinstance(v.get("w"), str):
                out["w"] = v["w"]
            return out
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    return {"node": "?", "advertise": "", "ready": False, "malformed": True}


class PartitionMap:
    """``owner(p)``: the address of partition ``p``'s last lease holder ("" if free or
    unknown). ``on_change(p, address)`` runs on the watch thread for every change."""

    def __init__(self, servers, bucket: str = BUCKET, on_change=None, timeout_s: float = 10.0,
                 credentials: str = "", log=None):
        self.servers, self.bucket, self.timeout_s = list(servers), bucket, timeout_s
        # log(line): the connection's state changes (shm.runtime.nats_log); default: a warning
        # on the ingress.partmap logger (stderr when logging is not configured)
        self.conn_log = ConnectionLog("risk-engine: partition map", log or logging.getLogger(__name__).warning)
        self.credentials = credentials      # the NATS credentials file (shm.runtime.nats_auth)
        self.on_change = on_change or (lambda p, address: None)
        self.partitions = 0
        self._owners: dict[int, str] = {}
        self.changes = 0                    # values applied (tests wait on it)
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="partition-map", daemon=True)

    def start(self) -> "PartitionMap":
        """Read the whole map (bounded by ``timeout_s``), then keep watching; raises
        PartitionMapError when the first read fails."""
        self._thread.start()
        if not self._ready.wait(self.timeout_s + 5):
            self.close()
            raise PartitionMapError(f"bucket={self.bucket} servers={','.join(self.servers)}: "
                                    f"no map within {self.timeout_s:g} s")
        if self.error is not None:
            self.close()
            e = self.error
            raise PartitionMapError(f"bucket={self.bucket} servers={','.join(self.servers)}: "
                                    f"{type(e).__name__}: {e}") from None
        return self

    def owner(self, p: int) -> str:
        return self._owners.get(p, "")

    def owners(self) -> dict[int, str]:
        return dict(self._owners)

    def close(self, timeout_s: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:             # the loop has already closed
                pass
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # --- the watch thread -------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:           # reported by start(), or kept for the owner
            self.error = e
        finally:
            self._ready.set()

    def _apply(self, key: str, value: bytes | None, op: str | None) -> None:
        if not key.startswith(LEASE_PREFIX) or not key[len(LEASE_PREFIX):].isdigit():
            return
        p = int(key[len(LEASE_PREFIX):])
        if self.partitions and p >= self.partitions:
            return
        address = "" if value is None or op in _OPS_GONE else decode(value)["advertise"]
        address = address if valid_address(address) else ""
        self._owners[p] = address
        self.changes += 1
        self.on_change(p, address)

    async def _run(self) -> None:
        import nats                          # lazy: nats-py only for clients in cluster mode
        import nats.errors                   # lazy: as above
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        nc = await asyncio.wait_for(nats.connect(
            self.servers, **auth_options(self.credentials), name="risk-engine partition map", connect_timeout=2,
            inbox_prefix=INBOX_PREFIX, reconnect_time_wait=0.25, max_reconnect_attempts=-1,
            **self.conn_log.callbacks()), self.timeout_s)
        try:
            js = nc.jetstream(timeout=2.0)
            kv, w, last = await asyncio.wait_for(watch_all(js, self.bucket), self.timeout_s)
            meta = await asyncio.wait_for(kv.get("meta"), self.timeout_s)
            parts = json.loads(meta.value)["partitions"]
            if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= 1 << 16:
                raise PartitionMapError(f"bucket={self.bucket}: meta partitions={parts!r}")
            self.partitions = parts
            while not self._stop.is_set():
                try:
                    e = await w.updates(timeout=0.5)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue                 # nothing changed: look at the stop flag again
                if e is None:                # nats-py's marker: not trusted (caught_up)
                    continue
                self._apply(e.key, e.value, e.operation)
                if caught_up(e, last):
                    self._ready.set()
            await w.stop()
        finally:
            self.conn_log.closing()
            await nc.close()
