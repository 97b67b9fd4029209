"""partition_of is the workers' shard hash mod the partition count, for every key width and
sign; the ownership table's leases lapse by themselves at their deadline."""
from __future__ import annotations

import numpy as np
import pytest

from engine.cluster.ownership import OwnershipTable, now_ns
from engine.cluster.partition import partition_of, partition_of_keys
from ingress.admission import Shards
from shm.runtime.config import load_config

MUL, U64 = 0x9E3779B97F4A7C15, (1 << 64) - 1


def reference(key: int, n: int) -> int:
    return (((key & U64) * MUL & U64) >> 32) % n


@pytest.mark.parametrize("n", [1, 2, 3, 64, 4096])
def test_partition_is_the_shard_hash_mod_the_partition_count(n):
    rng = np.random.default_rng(7)
    keys = np.concatenate([rng.integers(0, 1 << 63, 500, dtype=np.uint64) * np.uint64(2),
                           np.array([0, 1, U64, 1 << 63], dtype=np.uint64)])
    got = partition_of_keys(keys, n)
    assert [int(g) for g in got] == [reference(int(k), n) for k in keys]
    assert all(partition_of({"account_id": int(k)}, "account_id", n) == reference(int(k), n) for k in keys[:50])
    signed = np.array([-1, -(1 << 63), 5], dtype=np.int64)
    assert [int(g) for g in partition_of_keys(signed, n)] == [reference(int(k), n) for k in signed]
    assert partition_of({"k": -1}, "k", n) == reference(-1, n)


def test_partition_and_worker_come_from_one_hash():
    """With n_workers == partitions the worker the ingress picks is the partition: one hash."""
    schema = load_config().schema
    shards = Shards(schema, 64)
    rec = np.zeros(1, schema.dtype)
    for key in (0, 1, 42, 2**40 + 3, 2**64 - 1):
        rec[schema.shard_key] = key
        assert shards.worker_of_record(rec.tobytes(), 0) == partition_of(
            {schema.shard_key: key}, schema.shard_key, 64)


def test_a_key_outside_64_bits_is_refused():
    with pytest.raises(ValueError, match="account_id=18446744073709551616: not a 64-bit integer"):
        partition_of({"account_id": 1 << 64}, "account_id", 64)


def test_leases_in_the_table_lapse_at_their_deadline():
    t = OwnershipTable(4)
    now = now_ns()
    t.begin(1, 17, now + 10**9)
    t.begin(2, 18, now + 10**9)
    assert t.owned(now) == {1: 17, 2: 18} and t.owns(1, now) == 17
    t.extend(1, 19, now + 3 * 10**9)
    assert t.owned(now + 2 * 10**9) == {1: 19}       # 2 not renewed: gone by itself
    assert t.owns(2, now + 2 * 10**9) == 0
    t.clear(1)
    assert t.owned(now) == {2: 18} and t.owns(1, now) == 0 and t.owns(3) == 0
