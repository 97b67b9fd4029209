"""The ingress's ownership check on a cluster node (docs/CLUSTER.md, "Routing"): an event whose
partition this node holds no valid lease on is never evaluated here; its request is answered
NOT_OWNER naming the partition and its owner's advertised address (docs/PROTOCOL.md).

The partition is the workers' shard-key hash reduced mod the partition count
(ingress.admission.shard_of). The leases and the owners' addresses are read from the node's
``ownership`` segment (shm.ownership), which the supervisor created before the ingress
started. A batch is all or nothing: one event of a foreign partition and the whole request
is refused, naming the first such event's partition. Without a ``cluster:`` section the
router builds no OwnerCheck and no request pays for one.

Where each path asks: the general path (JSON, batches, retries) before routing to workers,
after the idempotency window (a retry of a request this node decided gets that decision back,
never a redirect that would have it decided twice); the Python fast path declines a foreign
event to the general path; the compiled loop does the same in compiled code
(ingress._owner_kernels).
"""
from __future__ import annotations

import numpy as np

from shm.names import segment_name
from shm.ownership import NO_OWNER, SEGMENT, OwnershipTable, now_ns
from shm.segment import Segment
from shm.types import ErrorCode
from ingress.admission import shard_of, shard_struct
from ingress.wire import WireError

_HASH_MUL = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


def not_owner_message(p: int, owner: str) -> str:
    """NOT_OWNER's message: ``partition=<p> owner=<address>`` (``owner=none``: no node known)."""
    return f"partition={p} owner={owner or NO_OWNER}"


class OwnerCheck:
    def __init__(self, cfg, plan: dict):
        c = cfg.cluster
        self.partitions = c.partitions
        self.advertise = c.advertise
        self.segment = Segment.attach(segment_name(plan["instance"], SEGMENT, plan["owner_pid"]))
        self.table = OwnershipTable(self.partitions, self.segment.buf)
        self.key = cfg.schema.shard_key
        key_dt, self.key_off = cfg.schema.dtype.fields[self.key][:2]
        self.key_struct = shard_struct(key_dt)
        self.refused = 0                    # requests answered NOT_OWNER

    def foreign(self, records: np.ndarray) -> int:
        """The first foreign partition among ``records`` (one request's events), or -1."""
        parts = shard_of(records[self.key], self.partitions)
        i = self.table.first_foreign(parts, now_ns())
        return -1 if i < 0 else int(parts[i])

    def record_owned(self, buf, off: int) -> bool:
        """May this node decide the one event record at ``buf[off:]`` now (the fast path)?"""
        key = self.key_struct.unpack_from(buf, self.key_off + off)[0] & _U64
        p = (((key * _HASH_MUL) & _U64) >> 32) % self.partitions
        return now_ns() < self.table.until_ns[p]

    def refusal(self, p: int, request_id, kind: str) -> WireError:
        """The NOT_OWNER reply for foreign partition ``p``. The map naming this node while
        its own lease lapsed (agent stalled, NATS unreachable): no owner is known."""
        self.refused += 1
        owner = self.table.owner(p)
        if owner == self.advertise:
            owner = ""
        return WireError(ErrorCode.NOT_OWNER, not_owner_message(p, owner),
                         request_id=request_id, kind=kind)

    def until_ns(self) -> np.ndarray:
        """The lease deadlines, for the compiled loop (ingress._owner_kernels)."""
        return self.table.until_ns

    def close(self) -> None:
        self.table = None                   # the views go first, so the mapping can close
        self.segment.close()
