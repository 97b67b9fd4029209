"""The ingress's ownership check against a real ``ownership`` segment, written as the lease
agent and the node's map watcher write it: an event is this node's only while its partition
(the workers' hash mod the partition count) has a lease whose deadline is ahead of
CLOCK_BOOTTIME; the Python check, the compiled loop's check and the table agree; a batch
names its first foreign partition; NOT_OWNER names the owner recorded for it, and ``none``
when that is unknown, unusable or this very node. End to end on two engines:
tests/cluster/test_routing.py."""
from __future__ import annotations

import dataclasses
import os
import uuid

import numpy as np
import pytest

from ingress import _owner_kernels as OK
from ingress.admission import shard_of
from ingress.ownercheck import OwnerCheck
from shm.ownership import ADDR_MAX, SEGMENT, OwnershipTable, now_ns, segment_bytes, valid_address
from shm.runtime.config import load_config
from shm.runtime.config_types import ClusterConfig
from shm.segment import Segment
from shm.types import ErrorCode
from tests.ingress.test_protocol_doc import unmatched

P = 8
ME, OTHER = "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"


@pytest.fixture
def node():
    """(writer table, OwnerCheck) over one real segment, removed afterwards."""
    cfg = load_config(None)
    cfg = dataclasses.replace(cfg, cluster=ClusterConfig(servers=("nats://127.0.0.1:4222",),
                                                         partitions=P, node="n0", advertise=ME))
    instance = "t" + uuid.uuid4().hex[:10]
    seg = Segment.create(instance, SEGMENT, segment_bytes(P), os.getpid())
    table = OwnershipTable(P, seg.buf)
    check = OwnerCheck(cfg, {"instance": instance, "owner_pid": os.getpid()})
    try:
        yield table, check, cfg
    finally:
        check.close()
        table = None
        seg.unlink()
        seg.close()


def records(cfg, accounts):
    r = np.zeros(len(accounts), cfg.schema.dtype)
    r[cfg.schema.shard_key] = accounts
    return r


def test_only_events_of_partitions_with_a_live_lease_are_this_nodes(node):
    table, check, cfg = node
    accounts = np.arange(-50, 50, dtype=np.int64)
    parts = shard_of(accounts, P)
    recs = records(cfg, accounts)
    key_off = cfg.schema.dtype.fields[cfg.schema.shard_key][1]
    raw = recs.view(np.uint8)
    size = cfg.schema.record_size
    ts = np.zeros(2, np.int64)
    now = now_ns()
    table.begin(1, 11, now + 60 * 10**9)          # valid for a minute
    table.begin(2, 12, now + 60 * 10**9)
    table.begin(3, 13, now - 1)                   # lapsed: the agent stopped renewing it
    mine = {1, 2}
    for i, p in enumerate(parts.tolist()):
        py = check.record_owned(raw, i * size)
        h = OK.shard_hash(raw, i * size + key_off, 8, True)
        assert py == OK.owned(check.until_ns(), h, ts) == (p in mine), (i, p)
        assert check.foreign(recs[i:i + 1]) == (-1 if p in mine else p)
    # a batch: the first event whose partition is foreign
    order = np.argsort(np.isin(parts, list(mine)))[::-1]     # owned ones first
    batch = recs[order]
    first = next(p for p in parts[order].tolist() if p not in mine)
    assert check.foreign(batch) == first
    assert check.foreign(recs[np.isin(parts, list(mine))]) == -1
    table.clear(1)
    assert not any(check.record_owned(raw, i * size) for i in np.flatnonzero(parts == 1).tolist())


def test_not_owner_names_the_recorded_owner_or_none(node):
    table, check, _ = node
    e = check.refusal(4, 99, "binary")
    assert e.code == ErrorCode.NOT_OWNER and e.message == "partition=4 owner=none"
    table.set_owner(4, OTHER)
    assert check.refusal(4, 99, "json").message == f"partition=4 owner={OTHER}"
    table.set_owner(4, ME)                         # the map says us, our lease lapsed
    assert check.refusal(4, 99, "binary").message == "partition=4 owner=none"
    for bad in ("ipc:///tmp/x", "tcp://h:1 x", "tcp://" + "h" * ADDR_MAX + ":1", "tcp://h:0", "tcp://h",
                "tcp://\u00e9:1", "tcp://h:1\n"):
        assert not valid_address(bad), bad
        table.set_owner(4, bad)                    # a hostile lease value is not repeated
        assert check.refusal(4, 1, "binary").message == "partition=4 owner=none"
    table.set_owner(4, "tcp://risk-2.example:5555")
    assert table.owner(4) == "tcp://risk-2.example:5555"
    assert check.refused == 10
    # the messages are the two formats docs/PROTOCOL.md documents, and nothing else
    msgs = [check.refusal(4, 1, "binary").message, check.refusal(6, 1, "json").message]
    assert unmatched("NOT_OWNER", msgs) == ([], [])


def test_a_torn_owner_write_reads_as_unknown(node):
    table, check, _ = node
    table.set_owner(5, OTHER)
    words = table._addr_words[5]
    words[0] += 1                                  # a writer stopped mid-write
    assert table.owner(5) == ""
    words[0] += 1
    assert table.owner(5) == OTHER
