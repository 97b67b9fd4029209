"""The control plane in NATS JetStream KV (docs/CLUSTER.md, "Control plane"): the risk state
an operator changes (global halt, lists, account states) as values in one bucket, watched by
every node, plus each node's applied revision.

    halt                    {"on": bool, ...}
    list.NAME               {"name": NAME, "values": [u64 encoding, sorted unique], ...}
    state.NAME.iKEY|sHEX    {"name": NAME, "key": KEY, "state": ACTIVE|REDUCING|HALTED, ...}
    applied.NODE            {"node", "revision", "lag_ms", "time_ns", "errors"}

Every change value also carries ``by`` (the writing node) and ``time_ns`` (its wall clock
when it wrote). A value is a whole state, not an operation: a node applying it, or joining
later and reading the last value of each key, reaches the same state whatever it saw
before. A list change is a read-modify-write made exact by compare-and-set on the key's
revision (a concurrent writer's change is never lost: the loser re-reads and retries).

``ControlClient`` runs on a thread of its own with an asyncio loop (nats-py is asyncio, the
supervisor is not): its watcher queues every entry for the supervisor's thread, which alone
applies them (engine.cluster.control_apply); writes are called from that thread and wait.
"""
from __future__ import annotations

import asyncio
import json
import queue
import re
import threading

import nats
import nats.errors
import nats.js.errors as jserr
from nats.js import api

from shm.runtime.nats_auth import auth_options
from shm.runtime.nats_log import ConnectionLog

BUCKET = "risk_engine_control"
APPLIED = "applied."
_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RETRY = (nats.errors.Error, asyncio.TimeoutError, OSError)
INITIAL = object()          # queued after the bucket's current values: the join is complete


class ControlUnavailable(RuntimeError):
    """The control bucket cannot be read or written now (servers down, no quorum, timeout)."""


def _part(name: str) -> str:
    """A name as a KV key token (list and state names come from the config; hex otherwise)."""
    return name if _SAFE.fullmatch(name) else "x" + name.encode().hex()


def list_key(name: str) -> str:
    return f"list.{_part(name)}"


def state_key(name: str, key) -> str:
    k = f"i{key}" if isinstance(key, int) else "s" + key.encode().hex()
    return f"state.{_part(name)}.{k}"


def encode(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class ControlClient:
    """The control bucket on a daemon thread: ``start()`` connects (bounded), creates the
    bucket if missing and queues its current values then INITIAL; later changes follow."""

    def __init__(self, servers, node: str, replicas: int, open_timeout_s: float,
                 bucket: str = BUCKET, timeout_s: float = 5.0, credentials: str = "", log=None):
        self.servers, self.node, self.bucket = list(servers), node, bucket
        self.credentials = credentials          # the NATS credentials file (shm.runtime.nats_auth)
        self.replicas, self.open_timeout_s, self.timeout_s = replicas, open_timeout_s, timeout_s
        self.entries: queue.Queue = queue.Queue()     # KeyValue.Entry, then INITIAL, ...
        self.errors = 0                               # applied records not written
        # log(line): the connection's state changes (shm.runtime.nats_log); default: stderr
        self.conn_log = ConnectionLog("risk-engine: cluster: control plane", log)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"control {node}")
        self._nc = self._kv = self._watcher = None

    def call(self, coro, timeout_s: float | None = None):
        """Run ``coro`` on the client's loop and wait for it (from any other thread)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self.timeout_s if timeout_s is None else timeout_s)
        except TimeoutError:
            if fut.done():          # the coroutine's own timeout (asyncio.TimeoutError)
                raise
            fut.cancel()
            raise ControlUnavailable(f"bucket={self.bucket}: no answer within "
                                     f"{self.timeout_s if timeout_s is None else timeout_s:g} s") from None

    def submit(self, coro):
        """Run ``coro`` on the client's loop without waiting: a concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def jetstream(self):
        return self._nc.jetstream(timeout=self.timeout_s)

    def start(self) -> "ControlClient":
        self._thread.start()
        self.call(self._open(), self.open_timeout_s + 5)
        return self

    async def _open(self) -> None:
        self._nc = await asyncio.wait_for(nats.connect(
            self.servers, **auth_options(self.credentials), name=f"risk-engine control {self.node}",
            connect_timeout=2,
            reconnect_time_wait=0.25, max_reconnect_attempts=-1,
            **self.conn_log.callbacks()), self.open_timeout_s)      # a line per state change
        js = self._nc.jetstream(timeout=self.timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.open_timeout_s
        while True:             # servers just started elect a meta leader first
            try:
                try:
                    self._kv = await js.key_value(self.bucket)
                except jserr.BucketNotFoundError:
                    self._kv = await js.create_key_value(api.KeyValueConfig(
                        bucket=self.bucket, history=1, replicas=self.replicas,
                        storage=api.StorageType.FILE, description="risk-engine control plane"))
                self._watcher = await self._kv.watchall()
                break
            except _RETRY as e:
                if loop.time() > deadline:
                    raise ControlUnavailable(f"bucket={self.bucket}: not usable within "
                                             f"{self.open_timeout_s:g} s: {type(e).__name__}: {e}") from None
                await asyncio.sleep(0.25)
        loop.create_task(self._pump())

    async def _pump(self) -> None:
        async for entry in self._watcher:
            self.entries.put(INITIAL if entry is None else entry)

    async def _get(self, key: str):
        try:
            e = await self._kv.get(key)
            return e.revision, e.value
        except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
            return 0, None

    def get(self, key: str) -> tuple[int, bytes | None]:
        """(revision, value) of ``key``; (0, None) when it has none."""
        return self._wrap(self._get(key))

    async def _write(self, key: str, value: bytes, last: int | None):
        try:
            if last is None:
                return await self._kv.put(key, value)
            return await self._kv.update(key, value, last)
        except jserr.KeyWrongLastSequenceError:
            return None

    write_async = _write

    def write(self, key: str, value: bytes, last: int | None = None) -> int | None:
        """Write ``value`` (a compare-and-set on revision ``last`` unless None): the new
        revision, or None when ``key`` moved past ``last``."""
        return self._wrap(self._write(key, value, last))

    def _wrap(self, coro):
        try:
            return self.call(coro)
        except _RETRY as e:
            raise ControlUnavailable(f"bucket={self.bucket}: {type(e).__name__}: {e}") from None

    def record_applied(self, doc: dict) -> None:
        """Publish this node's applied revision (fire and forget: a later one supersedes it)."""
        async def put():
            try:
                await self._kv.put(APPLIED + self.node, encode(doc))
            except _RETRY:
                self.errors += 1
        if self._kv is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(put(), self._loop)

    def close(self) -> None:
        async def shut():
            if self._kv is not None:     # a stopped node is no longer waited for
                try:
                    await asyncio.wait_for(self._kv.delete(APPLIED + self.node), 2.0)
                except _RETRY:
                    pass
            if self._watcher is not None:
                await self._watcher.stop()
            if self._nc is not None:
                self.conn_log.closing()
                await self._nc.close()
        if self._thread.is_alive():
            try:
                self.call(shut(), 3.0)
            except (ControlUnavailable, *_RETRY):
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(3.0)
        if not self._loop.is_running():
            self._loop.close()


async def read_applied(js, bucket: str = BUCKET) -> dict:
    """For `cluster status`: {"revision": the last change's, "nodes": {node: applied doc}}.
    The keys come from the stream's own per-subject state and each one's last message (a
    delete marker, such as `resume`'s, is a change too), not from a key watcher, whose
    "no more keys" marker can come early on a loaded server and would show revision 0."""
    await js.key_value(bucket)                  # BucketNotFoundError: no node opened it
    stream, prefix = f"KV_{bucket}", f"$KV.{bucket}."
    info = await js.stream_info(stream, subjects_filter=prefix + ">")
    out, last, ruleset = {}, 0, None
    for subject in sorted(info.state.subjects or {}):
        m = await js.get_last_msg(stream, subject)
        k = subject[len(prefix):]
        if k == "ruleset":                      # engine.cluster.ruleset: shown by `cluster status`
            ruleset = {"revision": m.seq, "value": _json_or_none(m.data)}
        if not k.startswith(APPLIED):
            last = max(last, m.seq)
        elif (m.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
            try:
                out[k[len(APPLIED):]] = json.loads(m.data)
            except ValueError:
                out[k[len(APPLIED):]] = {"malformed": True}
    return {"bucket": bucket, "revision": last, "nodes": out, "ruleset": ruleset}


def _json_or_none(data):
    try:
        return json.loads(data)
    except ValueError:
        return None
