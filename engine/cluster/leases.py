"""Leases on partitions in a NATS JetStream key-value bucket (docs/CLUSTER.md, "Lease protocol").

One key per partition, ``p.N``, whose value names the holder ({"node", "advertise", "ready":
its take-over done, it serves}) and whose
revision (the stream sequence of its last write) is the lease's fencing token. Every write
is a compare-and-set on that revision (the Nats-Expected-Last-Subject-Sequence header, checked
by the stream's Raft leader): taking a free partition expects the revision of its delete
marker (0 when it never had an entry), taking an expired one or renewing expects the
revision read or last written, releasing deletes expecting the holder's revision. A write
with any other revision is refused (``None`` / False here), so a node holding an old token can
neither renew nor release a lease taken since.

The bucket has no server-side TTL: expiry is judged by the nodes on their own clocks
(engine.cluster.agent), never by comparing timestamps between machines. ``meta`` holds the
partition count, written once by the first node: a node configured with another count
refuses to start. ``node.NAME`` is each node's heartbeat, for balancing only (its value
says ``"journal_ok": false`` while the node cannot journal); ``drain.NAME`` marks a drained
node (engine.cluster.drain).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import nats
import nats.js.errors as jserr
from nats.js import api

from engine.cluster.jsopen import READY_S, opened
from shm.runtime.nats_auth import auth_options
from ingress.partmap import BUCKET, decode, encode, lease_key  # noqa: F401  (the bucket's names)

OP_HEADER = "KV-Operation"          # DEL / PURGE on a delete marker


class LeaseError(RuntimeError):
    """The bucket cannot be used (another partition count, a malformed meta entry ...)."""


@dataclass(frozen=True)
class Entry:
    """The current state of a key. ``revision`` 0: no entry ever; ``value`` None: free
    (never written, deleted or purged)."""
    revision: int
    value: dict | None
    time: object = None             # the server's timestamp (display only: another clock)


def member_key(node: str) -> str:
    return f"node.{node}"


def drain_key(node: str) -> str:
    """Present while ``node`` is drained (`risk-engine cluster drain`): it takes no partition
    and hands over those it holds; the other nodes count it out of the share."""
    return f"drain.{node}"


def journal_unavailable(heartbeat: bytes) -> bool:
    """Whether a heartbeat value says its node cannot journal: exactly ``"journal_ok":
    false`` in a JSON object. Anything else (no flag: a node older than it; a malformed
    value) reads as a working journal, as every heartbeat did before the flag: the node is
    counted in the share, and what it does with its leases is its own agent's to decide."""
    try:
        v = json.loads(heartbeat)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(v, dict) and v.get("journal_ok") is False


class LeaseStore:
    """The lease bucket through one JetStream context. Timeouts, lost connections and
    unavailable streams raise (nats.errors.Error): the caller keeps its state and retries."""

    def __init__(self, js, bucket: str = BUCKET, timeout_s: float = 1.0):
        self.js, self.bucket, self.timeout_s = js, bucket, timeout_s
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."

    async def open(self, partitions: int | None, replicas: int = 1, create: bool = True) -> int:
        """Create the bucket if missing (``create``; as the journal stream and the object
        stores are: engine.cluster.jsopen, StoreUnavailable if it stays unusable) and agree on
        the partition count: returns the bucket's count; raises LeaseError if it differs from
        ``partitions``, or if the bucket is missing and not to be created."""
        if create:                  # returns once the stream has a leader: the meta write follows
            await opened(self.js, self.stream, lambda: self.js.key_value(self.bucket),
                         lambda: self.js.create_key_value(api.KeyValueConfig(
                             bucket=self.bucket, history=1, replicas=replicas,
                             storage=api.StorageType.FILE, description="risk-engine partition leases")),
                         jserr.BucketNotFoundError, f"bucket {self.bucket}", READY_S)
        else:
            try:
                await self.js.key_value(self.bucket)
            except jserr.BucketNotFoundError:
                raise LeaseError(f"bucket={self.bucket}: no lease bucket on these servers "
                                 "(no node has started)") from None
        meta = await self.get("meta")
        if meta.value is None and partitions is not None:
            if await self._write("meta", json.dumps({"partitions": partitions}).encode(), 0) is None:
                meta = await self.get("meta")      # another node wrote it first
            else:
                return partitions
        if meta.value is None:
            raise LeaseError(f"bucket={self.bucket}: no meta entry (no node has started)")
        try:
            have = json.loads(meta.value)["partitions"]
        except (ValueError, KeyError, TypeError):
            raise LeaseError(f"bucket={self.bucket}: meta entry is malformed: {meta.value[:80]!r}") from None
        if partitions is not None and have != partitions:
            raise LeaseError(f"cluster.partitions={partitions} but the cluster's lease bucket "
                             f"{self.bucket} has partitions={have}: every node needs the same count")
        return have

    async def get(self, key: str) -> Entry:
        """The key's last write, read from the stream's leader. Raw: also the revision of a
        delete marker, which is what taking a released partition must expect."""
        try:
            msg = await self.js.get_msg(self.stream, subject=self.prefix + key)
        except jserr.NotFoundError:
            return Entry(0, None)
        deleted = msg.headers and msg.headers.get(OP_HEADER) in ("DEL", "PURGE")
        value = None if deleted else msg.data
        return Entry(msg.seq, value, msg.time)

    async def read(self, p: int) -> Entry:
        e = await self.get(lease_key(p))
        return e if e.value is None else Entry(e.revision, decode(e.value), e.time)

    async def _write(self, key: str, value: bytes, last: int) -> int | None:
        try:
            ack = await self.js.publish(self.prefix + key, value, timeout=self.timeout_s,
                                        headers={api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})
        except jserr.APIError as e:
            if e.err_code in (10071, 10164):            # wrong last sequence: the CAS is refused
                return None
            raise
        return ack.seq

    async def take(self, p: int, value: bytes, last: int) -> int | None:
        """Take partition ``p`` whose current revision is ``last`` (free or expired): the new
        revision, or None if the entry has changed since."""
        return await self._write(lease_key(p), value, last)

    async def renew(self, p: int, value: bytes, revision: int) -> int | None:
        """Renew the lease held at ``revision``: the next revision, or None if refused."""
        return await self._write(lease_key(p), value, revision)

    async def release(self, p: int, revision: int) -> bool:
        """Delete the lease held at ``revision`` (a delete marker: the partition is free)."""
        try:
            await self.js.publish(self.prefix + lease_key(p), b"", timeout=self.timeout_s,
                                  headers={OP_HEADER: "DEL",
                                           api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)})
        except jserr.APIError as e:
            if e.err_code in (10071, 10164):
                return False
            raise
        return True

    async def heartbeat(self, node: str, advertise: str, journal_ok: bool = True) -> None:
        value = encode(node, advertise) if journal_ok else \
            json.dumps({"node": node, "advertise": advertise, "journal_ok": False}, separators=(",", ":")).encode()
        await self.js.publish(self.prefix + member_key(node), value, timeout=self.timeout_s)

    async def leave(self, node: str) -> None:
        await self.js.publish(self.prefix + member_key(node), b"", timeout=self.timeout_s,
                              headers={OP_HEADER: "DEL"})

    async def members(self) -> dict[str, int]:
        """{node: revision of its last heartbeat} of every node with a heartbeat entry."""
        return (await self.roster())[0]

    async def roster(self) -> tuple[dict[str, int], set[str], set[str]]:
        """``members()``, the drained nodes (a ``drain.NODE`` entry) and the nodes whose
        heartbeat says their journal is unavailable. The keys come from the stream's leader
        (its subjects, one request), then each value: not from nats-py's ``keys()``, a watch
        that stops at a marker which can come before the values (ingress.partmap.caught_up),
        so a listing through a server behind a write can miss keys."""
        keys = []
        for kind in ("node", "drain"):
            info = await self.js.stream_info(self.stream, subjects_filter=f"{self.prefix}{kind}.>")
            keys += [s[len(self.prefix):] for s in (info.state.subjects or {})]
        out, drained, unfit = {}, set(), set()
        for k in keys:
            e = await self.get(k)
            if e.value is None:
                continue
            if k.startswith("node."):
                out[k[5:]] = e.revision
                if journal_unavailable(e.value):
                    unfit.add(k[5:])
            else:
                drained.add(k[6:])
        return out, drained, unfit

    async def set_drain(self, node: str, value: bytes) -> int:
        return (await self.js.publish(self.prefix + drain_key(node), value, timeout=self.timeout_s)).seq

    async def clear_drain(self, node: str) -> None:
        await self.js.publish(self.prefix + drain_key(node), b"", timeout=self.timeout_s,
                              headers={OP_HEADER: "DEL"})


async def connect_once(servers: list[str], credentials: str | None = None):
    """One NATS connection for a command (no reconnects), as the user in the ``credentials``
    file (shm.runtime.nats_auth); ConnectionError saying why once."""
    errors = []

    async def quiet(e):                      # nats-py prints each failed attempt otherwise
        errors.append(e)
    try:
        return await nats.connect(servers, **auth_options(credentials), connect_timeout=2, allow_reconnect=False,
                                  max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet)
    except Exception as e:                  # nats-py raises its own or OSError; say why once
        why = errors[-1] if errors else e
        raise ConnectionError(f"cannot connect: {type(why).__name__}: {why}") from None
