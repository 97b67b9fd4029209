"""bench.cluster_nodes.wait_balanced waits for the spread the lease agents' balance settles at
(engine.cluster.members.share), not for one it never reaches: 64 partitions on 3 nodes settle
at 22/22/20, which the bench's earlier rule (each node at least 64 // 3 = 21) waited for in
vain. The nodes' admin plane is not what is tested here (tests/bench/test_cluster_bench.py runs
the bench against real nodes, slow): ``owned`` reads a fixed spread."""
from __future__ import annotations

import pytest

import bench.cluster_nodes as cn
from engine.cluster.members import share


def spread(*sizes: int) -> list[set[int]]:
    out, p = [], 0
    for n in sizes:
        out.append(set(range(p, p + n)))
        p += n
    return out


def test_the_balance_is_every_partition_held_once_and_no_node_over_its_share():
    assert share(64, 3) == 22 and share(8, 3) == 3 and share(8, 2) == 4 and share(7, 1) == 7
    assert cn.balanced(spread(22, 22, 20), 64)
    assert cn.balanced(spread(22, 21, 21), 64)
    assert cn.balanced(spread(3, 3, 2), 8)
    assert not cn.balanced(spread(23, 21, 20), 64)          # one over its share: it releases
    assert not cn.balanced(spread(22, 22, 19), 64)          # one partition held by nobody
    a, b, c = spread(22, 22, 20)
    assert not cn.balanced([a, b | {0}, c - {63}], 64)      # one held twice (a hand-over)
    with pytest.raises(ValueError):
        share(8, 0)


def test_wait_balanced_returns_at_the_spread_the_agents_settle_at(monkeypatch):
    nodes = spread(22, 22, 20)
    monkeypatch.setattr(cn, "owned", lambda e: nodes[e])
    assert cn.wait_balanced([0, 1, 2], timeout_s=2.0, partitions=64) == nodes
    nodes[:] = spread(23, 21, 20)                          # not there yet: it times out
    with pytest.raises(TimeoutError):
        cn.wait_balanced([0, 1, 2], timeout_s=0.3, partitions=64)
