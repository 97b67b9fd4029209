"""One measured phase: spread the clients (and the open-loop rate) over P load processes,
start them at the same monotonic instant, draw a progress bar on stderr, merge their
histograms (HdrHistogram encode/decode) and counts, and measure their CPU with psutil.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field, replace

import psutil
from hdrh.histogram import HdrHistogram

from bench.loadgen import LoadResult, LoadSpec, child_main, new_histogram


@dataclass
class PhaseResult:
    label: str
    spec: LoadSpec                    # the template (clients and rate are the totals)
    processes: int
    sent: int = 0
    ok: int = 0
    events_ok: int = 0
    unsent: int = 0
    errors: dict = field(default_factory=dict)
    decision_errors: dict = field(default_factory=dict)
    hist: HdrHistogram = None
    intervals: list = field(default_factory=list)     # HdrHistogram per interval
    samples: list = field(default_factory=list)
    load_cpu_s: float = 0.0           # CPU seconds of the load processes during the phase
    wall_s: float = 0.0
    server_cpu_s: float | None = None
    server_threads: dict = field(default_factory=dict)   # "process: thread" -> CPU seconds
    server_write_bytes: int | None = None   # file bytes the servers dirtied (/proc/PID/io)

    @property
    def answered(self) -> int:
        return self.ok + sum(v for k, v in self.errors.items() if k != "NO_REPLY")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible (zeros dropped)."""
    out = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return [n for n in out if n > 0]


def _bar(label: str, done: int, elapsed: float, total: float) -> str:
    frac = min(1.0, elapsed / total) if total > 0 else 1.0
    width = 30
    fill = int(frac * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    return (f"\r{label:>7} [{'#' * fill}{'.' * (width - fill)}] {elapsed:5.1f}/{total:g} s "
            f"{done:>9} replies {rate:>9.0f}/s")


def run_phase(label: str, spec: LoadSpec, processes: int, server_pids: tuple[int, ...] = (),
              progress: bool = True) -> PhaseResult:
    """Run ``spec`` (``clients`` and ``rate`` are totals) over ``processes`` load processes."""
    counts = split(spec.clients, max(1, processes))
    ctx = mp.get_context("spawn")
    shared = ctx.Array("q", len(counts), lock=False)
    children = []
    base = spec.client_id_base
    for j, c in enumerate(counts):
        rate = spec.rate * c / spec.clients if spec.rate else 0.0
        sub = replace(spec, clients=c, rate=rate, phase=j / len(counts), seed=spec.seed + j,
                      client_id_base=base)
        base += c
        parent, child = ctx.Pipe()
        p = ctx.Process(target=child_main, args=(sub, child, shared, j), daemon=True,
                        name=f"bench-load-{j}")
        p.start()
        children.append((p, parent))
    try:
        procs = []
        for p, conn in children:
            if not conn.poll(120):
                raise RuntimeError(f"load process {p.name} not ready after 120 s")
            msg = conn.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"load process {p.name} failed: {msg[1]}")
            procs.append(psutil.Process(msg[1]))
        servers = [psutil.Process(pid) for pid in server_pids]
        srv_cpu0 = _tree_cpu(servers)
        srv_wb0 = _tree_write_bytes(servers)
        threads0 = tree_threads(servers)
        start_ns = time.monotonic_ns() + 200_000_000
        for _, conn in children:
            conn.send(start_ns)
        total_s = spec.warmup_s + spec.duration_s
        results: list[LoadResult] = []
        pending = dict(enumerate(children))
        while pending:
            elapsed = max(0.0, (time.monotonic_ns() - start_ns) / 1e9)
            if progress:
                sys.stderr.write(_bar(label, int(sum(shared)), max(0.0, elapsed - spec.warmup_s),
                                      spec.duration_s) if elapsed > spec.warmup_s
                                 else _bar(label + "~", 0, elapsed, spec.warmup_s))
                sys.stderr.flush()
            for j, (p, conn) in list(pending.items()):
                if conn.poll(0.05 if progress else 0.2):
                    msg = conn.recv()
                    if msg[0] != "result":
                        raise RuntimeError(f"load process {p.name} failed: {msg[1]}")
                    results.append(msg[1])
                    del pending[j]
                elif not p.is_alive():
                    raise RuntimeError(f"load process {p.name} died: exitcode={p.exitcode}")
            if elapsed > total_s + spec.drain_s + spec.timeout_ms / 1000 + 60:
                raise RuntimeError(f"load processes still running {elapsed:.0f} s after start")
        wall_s = (time.monotonic_ns() - start_ns) / 1e9
        srv_cpu = _tree_cpu(servers) - srv_cpu0 if servers else None
        srv_wb = _tree_write_bytes(servers) - srv_wb0 if servers else None
        threads = {k: v - threads0.get(k, 0.0) for k, v in tree_threads(servers).items()}
        if progress:
            sys.stderr.write("\n")
    finally:
        for p, conn in children:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    out = PhaseResult(label, spec, len(counts), hist=new_histogram(), wall_s=wall_s,
                      server_cpu_s=srv_cpu, server_threads=threads, server_write_bytes=srv_wb)
    for r in results:
        merge(out, r)
    return out


def combine(parts: list[PhaseResult]) -> PhaseResult:
    """One result from the rounds of one side (``--rounds``): counts, CPU and wall time
    summed, histograms merged, intervals concatenated; the spec's duration is the total."""
    first = parts[0]
    out = PhaseResult(first.label, replace(first.spec, duration_s=sum(p.spec.duration_s for p in parts)),
                      first.processes, hist=new_histogram(), server_cpu_s=None)
    for p in parts:
        out.sent += p.sent
        out.ok += p.ok
        out.events_ok += p.events_ok
        out.unsent += p.unsent
        out.load_cpu_s += p.load_cpu_s
        out.wall_s += p.wall_s
        if p.server_cpu_s is not None:
            out.server_cpu_s = (out.server_cpu_s or 0.0) + p.server_cpu_s
        if p.server_write_bytes is not None:
            out.server_write_bytes = (out.server_write_bytes or 0) + p.server_write_bytes
        for k, v in p.server_threads.items():
            out.server_threads[k] = out.server_threads.get(k, 0.0) + v
        for src, dst in ((p.errors, out.errors), (p.decision_errors, out.decision_errors)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        out.hist.add(p.hist)
        out.intervals.extend(p.intervals)
        out.samples.extend(p.samples)
    return out


def merge(out: PhaseResult, r: LoadResult) -> None:
    out.sent += r.sent
    out.ok += r.ok
    out.events_ok += r.events_ok
    out.unsent += r.unsent
    out.load_cpu_s += r.cpu_s
    for src, dst in ((r.errors, out.errors), (r.decision_errors, out.decision_errors)):
        for k, v in src.items():
            dst[k] = dst.get(k, 0) + v
    out.hist.add(HdrHistogram.decode(r.hist))
    for j, enc in enumerate(r.intervals):
        while len(out.intervals) <= j:
            out.intervals.append(new_histogram())
        out.intervals[j].add(HdrHistogram.decode(enc))
    out.samples.extend(r.samples)


def _tree(servers):
    """Every live process of the servers' trees: each server, then its children."""
    for p in servers:
        try:
            procs = [p] + p.children(recursive=True)
        except psutil.Error:
            continue
        yield from procs


def _sum_tree(servers, read) -> float:
    """``read(process)`` summed over the servers' trees (a process that exits meanwhile adds
    nothing: the run's replies say what happened to it; the harness must still print them)."""
    total = 0
    for q in _tree(servers):
        try:
            total += read(q)
        except psutil.Error:
            pass
    return total


def tree_threads(servers) -> dict[str, float]:
    """CPU seconds of every thread of the servers' process trees, keyed ``process: thread``
    (the process title, e.g. ``risk-engine: worker 0``; the thread ``main`` or its kernel
    name, e.g. ``ZMQbg/IO/0``; threads of one process with the same name are summed)."""
    out: dict[str, float] = {}
    for q in _tree(servers):
        try:
            cmd = q.cmdline()
            title = cmd[0].strip() if cmd and cmd[0].startswith("risk-engine:") else q.name()
            for t in q.threads():
                name = "main" if t.id == q.pid else _comm(q.pid, t.id)
                key = f"{title}: {name}"
                out[key] = out.get(key, 0.0) + t.user_time + t.system_time
        except psutil.Error:
            pass
    return out


def _comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return str(tid)


def _tree_write_bytes(servers) -> int:
    """Bytes of file pages the servers' process trees dirtied (write_bytes of /proc/PID/io:
    counted when a clean page, or a whole large folio, turns dirty; what writeback will
    write). Pages of /dev/shm count nothing."""
    return _sum_tree(servers, lambda q: q.io_counters().write_bytes)


def _tree_cpu(servers) -> float:
    """CPU seconds of the servers and their live children."""
    return float(_sum_tree(servers, lambda q: sum(q.cpu_times()[:2])))
