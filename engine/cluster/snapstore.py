"""Partition snapshots in a JetStream object store, each naming the replication stream sequence
it covers (docs/CLUSTER.md, "Failover").

One object per partition and snapshot, ``p.<P>.<S>`` (S: the stream sequence, zero-padded),
in the bucket ``risk_engine_snapshots`` (replicas min(3, servers)). The payload is the
engine's own snapshot format (engine.snapshot: crc32 per array, a checked table of contents
and head, the exact size) holding the partition's feature arrays after applying every record
message of subject ``rj.<P>`` up to stream sequence S, and nothing after it. The object's
description is JSON: partition, covered stream sequence, the revision and node of the message
at S, the payload's size and SHA-256, the schema hash, the writing node.

Reading (``newest``) tries a partition's objects newest first and checks each completely:
the description, the payload's size and SHA-256 (besides nats' own digest), the engine
snapshot's checksums, partition and sequence in the payload equal to the description's, and
the covered sequence against the stream: at most ``upto`` (the taker's fence), and the message
stored at S is on the partition's subject with the recorded revision and node (a snapshot of
another stream, or of a stream recreated since, is refused). A refused object is reported
(``problems``: logged and counted by the caller) and the next older one tried; none left
means a replay of the whole subject. Nothing refused is ever restored.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors as jserr
import numpy as np
from nats.js import api

from engine.cluster.jsopen import open_object_store
from engine.cluster.replog import ReplicationLog, subject
from engine.snapshot import SnapshotCorruptError, load_snapshot_bytes, snapshot_bytes

BUCKET = "risk_engine_snapshots"
KEEP = 3                         # objects kept per partition (the older ones are fallbacks)
GET_TIMEOUT_S = 30.0             # nats-py's object get waits on its chunks without a bound
_NAME = re.compile(r"^p\.(\d+)\.(\d{20})$")


class SnapshotObjectError(RuntimeError):
    """The snapshot bucket cannot be used."""


@dataclass(frozen=True)
class PartitionSnapshot:
    partition: int
    covered_seq: int             # the stream sequence whose records the arrays include
    arrays: dict                 # name -> np.ndarray
    name: str                    # the object's name
    node: str                    # the node that wrote it


@dataclass
class SnapCounters:
    written: int = 0
    restored: int = 0
    refused: int = 0             # objects failing a check (reported, not used)
    full_replays: int = 0        # takes with no usable snapshot
    problems: list = field(default_factory=list)     # one line per refused object


def object_name(p: int, covered_seq: int) -> str:
    return f"p.{p}.{covered_seq:020d}"


class SnapshotObjects:
    """A partition snapshot bucket through one JetStream context (coroutines)."""

    def __init__(self, js, log: ReplicationLog, schema_hash: int, bucket: str = BUCKET,
                 keep: int = KEEP, timeout_s: float = GET_TIMEOUT_S):
        self.js, self.log, self.schema_hash = js, log, int(schema_hash)
        self.bucket, self.keep, self.timeout_s = bucket, keep, timeout_s
        self.store = None
        self.counters = SnapCounters()

    async def open(self, replicas: int) -> None:
        self.store = await open_object_store(self.js, self.bucket, replicas,
                                             "risk-engine partition snapshots", self.timeout_s)

    async def names(self, p: int) -> list[tuple[int, str]]:
        """(covered seq, name) of partition p's objects, newest first: from the bucket
        stream's per-subject state (one meta subject per object; a deleted object's meta is
        a delete marker), not a watcher whose end-of-entries can come early on a loaded
        server."""
        stream = f"OBJ_{self.bucket}"
        info = await self.js.stream_info(stream, subjects_filter=f"$O.{self.bucket}.M.>")
        out = []
        for subj in info.state.subjects or {}:
            try:
                name = base64.urlsafe_b64decode(subj.rsplit(".", 1)[1]).decode()
            except (ValueError, UnicodeDecodeError):
                continue
            m = _NAME.match(name)
            if not m or int(m.group(1)) != p:
                continue
            try:
                await self.store.get_info(name)
            except jserr.NotFoundError:          # deleted: its meta is a delete marker
                continue
            out.append((int(m.group(2)), name))
        return sorted(out, reverse=True)

    async def put(self, p: int, covered_seq: int, arrays: dict) -> str:
        """Write partition p's state covering stream sequence ``covered_seq`` (the arrays
        include every record message of rj.<p> up to it, nothing after); keep the newest
        ``keep`` objects of p. Returns the object's name."""
        at = None
        if covered_seq > 0:
            at = await self.js.get_msg(self.log.stream, seq=covered_seq)
            if at.subject != subject(self.log.prefix, p):
                raise SnapshotObjectError(f"partition={p} seq={covered_seq}: the stream's message "
                                          f"there is on {at.subject}, not this partition's subject")
        data = _encode(arrays, {"partition": p, "covered_seq": covered_seq})
        hdr = (at.headers or {}) if at is not None else {}
        desc = {"partition": p, "covered_seq": covered_seq, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "schema": self.schema_hash,
                "rev": int(hdr.get("Rj-Rev", 0)), "msg_node": hdr.get("Rj-Node", ""),
                "node": self.log.node}
        name = object_name(p, covered_seq)
        await asyncio.wait_for(self.store.put(name, data, meta=api.ObjectMeta(
            name=name, description=json.dumps(desc, separators=(",", ":")))), self.timeout_s)
        self.counters.written += 1
        for _, old in (await self.names(p))[self.keep:]:
            await self.store.delete(old)
        return name

    async def newest(self, p: int, upto: int) -> PartitionSnapshot | None:
        """The newest of p's snapshots that passes every check and covers at most stream
        sequence ``upto``; each refused one is reported in ``counters.problems``. None: no
        usable snapshot (the caller replays the whole subject, counted in full_replays)."""
        for covered, name in await self.names(p):
            try:
                snap = await self._load(p, name, covered, upto)
            except SnapshotCorruptError as e:
                self.counters.refused += 1
                self.counters.problems.append(f"bucket={self.bucket} object={name}: {e}")
                continue
            self.counters.restored += 1
            return snap
        self.counters.full_replays += 1
        return None

    async def verify(self, p: int, name: str, covered: int) -> PartitionSnapshot:
        """Read ``name`` back through every check ``newest`` makes (raises
        SnapshotCorruptError); counts nothing: the writer's own check before a trim."""
        return await self._load(p, name, covered, covered)

    async def _load(self, p: int, name: str, covered: int, upto: int) -> PartitionSnapshot:
        bad = SnapshotCorruptError
        if covered > upto:
            raise bad(f"covers stream seq {covered}, past the last one replayable ({upto})")
        try:
            res = await asyncio.wait_for(self.store.get(name), self.timeout_s)
        except jserr.DigestMismatchError:
            raise bad("payload fails the object store's SHA-256 digest") from None
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            raise bad(f"payload not delivered within {self.timeout_s:g} s (chunks missing?)") from None
        try:
            d = json.loads(res.info.description or "")
            want = {k: d[k] for k in ("partition", "covered_seq", "size", "sha256", "schema", "rev", "msg_node")}
        except (ValueError, KeyError, TypeError) as e:
            raise bad(f"description is not the snapshot's metadata ({e!r})") from None
        data = bytes(res.data or b"")
        if want["partition"] != p or want["covered_seq"] != covered:
            raise bad(f"description names partition {want['partition']} seq {want['covered_seq']}")
        if want["schema"] != self.schema_hash:
            raise bad(f"schema hash {want['schema']} != this node's {self.schema_hash}")
        if len(data) != want["size"] or len(data) != res.info.size:
            raise bad(f"payload {len(data)} B, description says {want['size']} B, object {res.info.size} B")
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise bad("payload SHA-256 differs from the description's")
        arrays, meta = _decode(data, name)
        if meta.get("partition") != p or meta.get("covered_seq") != covered:
            raise bad(f"payload names partition {meta.get('partition')} seq {meta.get('covered_seq')}")
        if covered > 0:
            try:
                at = await self.js.get_msg(self.log.stream, seq=covered)
            except jserr.NotFoundError:
                raise bad(f"stream {self.log.stream} holds no message at seq {covered}") from None
            h = at.headers or {}
            if at.subject != subject(self.log.prefix, p) or h.get("Rj-Rev") != str(want["rev"]) \
                    or h.get("Rj-Node") != want["msg_node"]:
                raise bad(f"stream {self.log.stream} seq {covered} is {at.subject} rev={h.get('Rj-Rev')} "
                          f"node={h.get('Rj-Node')}, not the message this snapshot covers "
                          f"(rev={want['rev']} node={want['msg_node']}): another stream's snapshot")
        return PartitionSnapshot(p, covered, arrays, name, d.get("node", ""))


def _encode(arrays: dict, meta: dict) -> bytes:
    """The arrays in the engine's snapshot format, built in memory: no temporary file or
    directory that a kill -9 could leave behind."""
    return snapshot_bytes({k: np.asarray(v) for k, v in arrays.items()}, meta=meta)


def _decode(data: bytes, name: str) -> tuple[dict, dict]:
    s = load_snapshot_bytes(data, f"object {name}")
    return dict(s.arrays), dict(s.meta)
