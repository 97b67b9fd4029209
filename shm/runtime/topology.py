"""CPU and NUMA topology from sysfs, and the plan of which CPU each engine process gets.

Read from ``/sys/devices/system/node`` (``root`` is a parameter so tests can use fake trees
with several nodes). A machine without that directory is one node holding every CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class TopologyError(ValueError):
    """A CPU request cannot be met; the message names the CPU and the allowed set."""


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's cpulist format: '0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return sorted(set(cpus))


@dataclass(frozen=True)
class Topology:
    node_of_cpu: dict[int, int]          # cpu -> NUMA node

    @property
    def nodes(self) -> list[int]:
        return sorted(set(self.node_of_cpu.values()))

    def cpus_of(self, node: int) -> list[int]:
        return sorted(c for c, n in self.node_of_cpu.items() if n == node)

    def node(self, cpu: int) -> int:
        return self.node_of_cpu.get(cpu, 0)


def read_topology(root: str | os.PathLike = "/sys/devices/system/node") -> Topology:
    base = Path(root)
    mapping: dict[int, int] = {}
    if base.is_dir():
        for d in sorted(base.glob("node[0-9]*")):
            try:
                node = int(d.name[4:])
                cpus = parse_cpulist((d / "cpulist").read_text())
            except (OSError, ValueError):
                continue
            for c in cpus:
                mapping[c] = node
    if not mapping:
        mapping = {c: 0 for c in range(os.cpu_count() or 1)}
    return Topology(mapping)


@dataclass(frozen=True)
class Placement:
    role: str       # "worker 0", "ingress"
    cpu: int        # -1: not pinned
    node: int


def plan_workers(topology: Topology, allowed: set[int], count: int, cpus: tuple[int, ...],
                 partitions: int = 0) -> list[Placement]:
    """One CPU per worker. Explicit ``cpus`` must be allowed; otherwise spread the allowed
    CPUs node by node (round robin over nodes, so two workers land on two nodes when they
    exist). ``count`` 0 means one worker per allowed CPU but one, which is left to the
    ingress (on 2 CPUs: 1 worker; the front door is busy whenever a worker is).

    ``partitions`` (cluster mode): the worker count must divide it, so that every event of a
    partition goes to one worker (docs/CLUSTER.md, "Partitions") and a partition's request is
    journaled in the request's order, the order a taker's window compares a resend in. A
    count of 0 becomes the largest such count that fits; an explicit one that does not
    divide it is refused."""
    for c in cpus:
        if c not in allowed:
            raise TopologyError(f"workers.cpus: cpu={c} is not in the allowed set {sorted(allowed)}")
    if cpus:
        chosen = list(cpus)
    else:
        per_node = [[c for c in topology.cpus_of(n) if c in allowed] for n in topology.nodes]
        chosen = []
        for i in range(max((len(p) for p in per_node), default=0)):
            chosen.extend(p[i] for p in per_node if i < len(p))
        chosen.extend(sorted(allowed - set(chosen)))    # CPUs sysfs did not list
    if not chosen:
        raise TopologyError("workers: no allowed CPU to run on")
    n = count or (max(1, len(chosen) - 1) if not cpus else len(chosen))
    if partitions and partitions % n:
        if count:
            raise TopologyError(f"workers.count={count} does not divide cluster.partitions={partitions}: "
                                f"a partition's events would go to several workers (docs/CLUSTER.md)")
        n = max(d for d in range(1, n + 1) if partitions % d == 0)
    return [Placement(f"worker {i}", chosen[i % len(chosen)], topology.node(chosen[i % len(chosen)]))
            for i in range(n)]


def pin_self(cpu: int) -> None:
    """Pin the calling process to one CPU (before it touches its memory: first touch after
    pinning keeps pages on the CPU's node)."""
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})


def format_cpulist(cpus) -> str:
    """The kernel's cpulist format: {0, 1, 2, 3, 8} -> '0-3,8' (parse_cpulist's inverse)."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of a running process to one CPU (as ``taskset -a``: sched_setaffinity
    on a pid changes only its main thread). Raises ProcessLookupError when the process is
    gone; a thread that ends meanwhile is skipped."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
        except ProcessLookupError:
            if tid == pid:
                raise


def affinity_of(pid: int) -> set[int] | None:
    """The CPUs a process may run on; None when it is gone."""
    try:
        return os.sched_getaffinity(pid)
    except ProcessLookupError:
        return None


def pages_by_node(pid: int, path_fragment: str, numa_maps_root: str = "/proc") -> dict[int, int]:
    """Resident pages per NUMA node of the mappings of ``pid`` whose file contains
    ``path_fragment`` (from /proc/PID/numa_maps): where a process's rings really live."""
    out: dict[int, int] = {}
    try:
        lines = Path(numa_maps_root, str(pid), "numa_maps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        if path_fragment not in line:
            continue
        for tok in line.split():
            if tok.startswith("N") and "=" in tok and tok[1:tok.index("=")].isdigit():
                node, pages = tok[1:].split("=", 1)
                out[int(node)] = out.get(int(node), 0) + int(pages)
    return out
