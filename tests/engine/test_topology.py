"""NUMA topology from fake sysfs trees, and the worker placement plan."""
import pytest

from shm.runtime.topology import TopologyError, parse_cpulist, plan_workers, read_topology


def fake_sysfs(tmp_path, nodes: dict[int, str]):
    for n, cpulist in nodes.items():
        d = tmp_path / f"node{n}"
        d.mkdir()
        (d / "cpulist").write_text(cpulist + "\n")
    (tmp_path / "possible").write_text("0-%d\n" % (len(nodes) - 1))   # not a node dir
    return tmp_path


@pytest.mark.parametrize("text,cpus", [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,4,6-7", [0, 1, 4, 6, 7]),
                                       ("", []), ("3,1", [1, 3])])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


def test_two_nodes_spread_round_robin(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}))
    assert topo.nodes == [0, 1]
    assert topo.cpus_of(1) == [4, 5, 6, 7]
    plan = plan_workers(topo, set(range(8)), 4, ())
    assert [(p.cpu, p.node) for p in plan] == [(0, 0), (4, 1), (1, 0), (5, 1)]
    assert [p.role for p in plan] == ["worker 0", "worker 1", "worker 2", "worker 3"]


def test_four_nodes_only_allowed_cpus(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-1", 1: "2-3", 2: "4-5", 3: "6-7"}))
    plan = plan_workers(topo, {1, 2, 7}, 3, ())
    assert [(p.cpu, p.node) for p in plan] == [(1, 0), (2, 1), (7, 3)]
    assert len(plan_workers(topo, {1, 2, 7}, 0, ())) == 2        # one CPU left to the ingress
    assert len(plan_workers(topo, {5}, 0, ())) == 1


def test_explicit_cpus_get_their_node(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}))
    plan = plan_workers(topo, set(range(8)), 2, (5, 2))
    assert [(p.cpu, p.node) for p in plan] == [(5, 1), (2, 0)]


def test_cpu_outside_allowed_set_is_refused(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-3"}))
    with pytest.raises(TopologyError, match="cpu=9 is not in the allowed set"):
        plan_workers(topo, {0, 1}, 1, (9,))


def test_no_sysfs_is_one_node(tmp_path):
    topo = read_topology(tmp_path / "missing")
    assert topo.nodes == [0]


def test_this_machine():
    topo = read_topology()
    assert topo.node_of_cpu
    assert all(n >= 0 for n in topo.node_of_cpu.values())


def test_pages_by_node_reads_numa_maps(tmp_path):
    from shm.runtime.topology import pages_by_node
    d = tmp_path / "42"
    d.mkdir()
    (d / "numa_maps").write_text(
        "7f00 default file=/dev/shm/risk-engine.x.1.req0 dirty=3 active=0 N0=2 N1=5 kernelpagesize_kB=4\n"
        "7f10 default file=/dev/shm/risk-engine.x.1.resp0 N1=4 kernelpagesize_kB=4\n"
        "7f20 default file=/usr/lib/libc.so N0=9\n")
    assert pages_by_node(42, "risk-engine.x.1.req0", str(tmp_path)) == {0: 2, 1: 5}
    assert pages_by_node(42, "resp0", str(tmp_path)) == {1: 4}
    assert pages_by_node(43, "req0", str(tmp_path)) == {}


def test_a_cluster_nodes_worker_count_divides_its_partitions(tmp_path):
    """Cluster mode: every event of a partition goes to one worker (docs/CLUSTER.md,
    "Partitions"): the automatic count is the largest divisor that fits, an explicit count
    that does not divide the partition count is refused with both names."""
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}))
    assert len(plan_workers(topo, set(range(8)), 0, ())) == 7
    assert len(plan_workers(topo, set(range(8)), 0, (), partitions=64)) == 4
    assert len(plan_workers(topo, set(range(8)), 0, (), partitions=12)) == 6
    assert len(plan_workers(topo, set(range(8)), 3, (), partitions=12)) == 3
    with pytest.raises(TopologyError, match=r"workers.count=3 does not divide cluster.partitions=64"):
        plan_workers(topo, set(range(8)), 3, (), partitions=64)
