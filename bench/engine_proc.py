"""Start and stop a ``risk-engine serve`` for a bench run, and read its GC pauses.

``EngineProcess(config, workers)`` runs ``python -m engine.cli serve`` on a free 127.0.0.1
port with a unique ``--instance`` and ``--metrics`` on another free port, and waits for the
``risk-engine: serving`` line (the first start compiles the rule kernel: allow minutes on a
busy machine). ``stop()`` sends SIGTERM and returns the exit code (0 = clean).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

READY_PREFIX = "risk-engine: serving"


def config_with_private_state(config: str | None, state_dir: str) -> str:
    """A copy of ``config`` (default: the bundled one) whose journal and snapshots go to
    ``state_dir`` (removed after the run) and whose relative paths are made absolute: a
    bench run must leave no journal behind."""
    import yaml
    from engine.config import portable_raw
    raw = portable_raw(config)
    raw["journal"] = {**(raw.get("journal") or {}), "dir": os.path.join(state_dir, "journal")}
    raw["snapshot"] = {**(raw.get("snapshot") or {}), "dir": os.path.join(state_dir, "snapshots")}
    out = os.path.join(state_dir, "config.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    def __init__(self, config: str | None = None, workers: int | None = None,
                 start_timeout_s: float = 300.0, instance: str | None = None,
                 metrics_off: bool = False):
        self.bind = f"tcp://127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.instance = instance or f"bench{os.getpid() % 100000}{int(time.time()) % 1000}"
        self.state_dir = tempfile.mkdtemp(prefix="risk-engine-bench-")
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--bind", self.bind,
               "--metrics", "off" if metrics_off else self.metrics, "--instance", self.instance,
               "--config", config_with_private_state(config, self.state_dir)]
        if workers:
            cmd += ["--workers", str(workers)]
        self.cmd = cmd
        self.stderr = tempfile.TemporaryFile(mode="w+")
        # Its own process group (a terminal's Ctrl-C reaches the bench, which stops the engine
        # cleanly; kill() signals the group), NOT its own session: a new session is a new
        # scheduler autogroup (kernel.sched_autogroup_enabled=1 here), and CFS then splits the
        # 2 CPUs between the engine's group and the load generator's, capping the engine near
        # half the machine while the echo baseline competes thread by thread in the bench's
        # group. Measured 2026-12-02: with a new session P99 25-35 ms at 15-18k requests/s,
        # without 7-12 ms at 16-26k, same engine and clients (docs/BENCH.md).
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     process_group=0)
        self.ready_line = self._wait_ready(start_timeout_s)
        # the supervisor logs to stdout (restarts, snapshots, reloads): keep reading it, so a
        # long run never fills the pipe and blocks the supervisor in print()
        self.stdout_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout_s: float) -> str:
        import select
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line.strip()
                if line:
                    continue
            if self.proc.poll() is not None:
                break
        rc = self.proc.poll()
        self.kill()
        raise RuntimeError(f"engine did not start: rc={rc} timeout_s={timeout_s} "
                           f"cmd={' '.join(self.cmd)}\n{self.stderr_text()[-3000:]}")

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stats(self) -> dict | None:
        return read_stats(self.metrics)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait; returns the exit code (kills the group after ``timeout_s``).
        Removes the run's journal and snapshots."""
        import shutil
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.kill()
                    return -9
            return self.proc.returncode
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the engine's process group, then remove what a killed engine leaves: its
        shared memory (each bench run has its own instance, so no later start reclaims it)
        and its journal and snapshots."""
        import shutil
        from engine.rundir import remove_dead_run_dir
        from shm.segment import reclaim_stale
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        reclaim_stale(self.instance)
        remove_dead_run_dir(self.instance)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def listening_pids(addr: str) -> tuple[int, ...]:
    """The engine process tree serving ``tcp://127.0.0.1:PORT`` (the process listening there,
    or its parent when that is the supervisor), for CPU accounting; () when unknown."""
    if not addr.startswith("tcp://"):
        return ()
    port = int(addr.rsplit(":", 1)[1])
    try:
        conns = psutil.net_connections("tcp")
    except psutil.Error:
        return ()
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                parent = psutil.Process(c.pid).parent()
                if parent and " ".join(parent.cmdline()).startswith("risk-engine: supervisor"):
                    return (parent.pid,)
            except psutil.Error:
                pass
            return (c.pid,)
    return ()


def engine_memory(pid: int) -> dict[str, tuple[int, int]]:
    """(RSS, RssAnon) in bytes by process title (``risk-engine: worker 0`` ...) of the
    engine tree. RSS also counts the pages of shared mappings a process has touched: a
    worker's journal segment (page cache, a sawtooth of up to journal.segment_bytes that
    rotation resets) and the shared-memory feature tables (fixed, checked on their own).
    RssAnon, the process's private memory (heap, Python objects), is what a leak grows."""
    out = {}
    root = psutil.Process(pid)
    for p in [root] + root.children(recursive=True):
        try:
            title = " ".join(p.cmdline()).strip() or p.name()
            if not title.startswith("risk-engine:"):
                title = f"{title[:40]} (pid {p.pid})"
            out[title] = (p.memory_info().rss, _rss_anon(p.pid))
        except (psutil.Error, OSError):
            continue
    return out


def _rss_anon(pid: int) -> int:
    """RssAnon of /proc/PID/status in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no RssAnon")


def read_stats(metrics: str | None) -> dict | None:
    """The ``/stats`` JSON of the engine whose metrics listen on HOST:PORT, or None."""
    if not metrics:
        return None
    try:
        with urllib.request.urlopen(f"http://{metrics}/stats", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def gc_pauses(stats: dict | None) -> dict[str, tuple[int, float]]:
    """``risk_gc_pause_seconds`` from ``/stats``: process -> (pauses, total seconds)."""
    out: dict[str, list] = {}
    for row in (stats or {}).get("risk_gc_pause_seconds", []):
        proc = row.get("process", "?")
        if row.get("sample", "").endswith("_count"):
            out.setdefault(proc, [0, 0.0])[0] = int(row["value"])
        elif row.get("sample", "").endswith("_sum"):
            out.setdefault(proc, [0, 0.0])[1] = float(row["value"])
    return {k: (v[0], v[1]) for k, v in out.items()}


def gc_delta(before: dict | None, after: dict | None) -> dict | None:
    """GC pauses between two ``/stats`` reads: {process: {"pauses", "total_ms"}} or None."""
    if before is None or after is None:
        return None
    b, a = gc_pauses(before), gc_pauses(after)
    return {p: {"pauses": a[p][0] - b.get(p, (0, 0.0))[0],
                "total_ms": round((a[p][1] - b.get(p, (0, 0.0))[1]) * 1e3, 3)} for p in a}


def stall_delta(before: dict | None, after: dict | None) -> dict | None:
    """Worker steps slower than engine.control.STALL_NS between two ``/stats`` reads
    (``risk_worker_stalls``): {"<worker> <phase>": count}, only the non-zero ones; None
    without both reads. A P99 spike next to a count here names the stage that held the
    batch (docs/BENCH.md, "Reading the table")."""
    if before is None or after is None:
        return None

    def counts(st):
        return {f"{r['worker']} {r['phase']}": r["value"] for r in st.get("risk_worker_stalls", [])}
    b, a = counts(before), counts(after)
    return {k: int(v - b.get(k, 0.0)) for k, v in a.items() if v - b.get(k, 0.0) > 0}


def engine_latency(before: dict | None, after: dict | None, transport: str = "binary") -> dict | None:
    """The engine's own view of the requests it admitted between two ``/stats`` reads: count
    and the bucket upper bounds holding p50 / p99 / max of ``risk_eval_duration_seconds``
    (arrival at the ingress to reply sent), in ms. Independent of the sender's lateness."""
    def buckets(st):
        return {r["le"]: r["value"] for r in (st or {}).get("risk_eval_duration_seconds", [])
                if r.get("transport") == transport and r["sample"].endswith("_bucket")}
    b0, b1 = buckets(before), buckets(after)
    if not b1:
        return None
    les = sorted(b1, key=lambda le: float("inf") if le == "+Inf" else float(le))
    cum = [b1[le] - b0.get(le, 0.0) for le in les]
    total = cum[-1]
    if total <= 0:
        return {"count": 0}

    def bound(q):
        le = next(le for le, c in zip(les, cum) if c >= q * total)
        return float("inf") if le == "+Inf" else float(le) * 1e3
    return {"count": int(total), "p50_le_ms": bound(0.5), "p99_le_ms": bound(0.99),
            "max_le_ms": bound(1.0)}


def engine_latency_text(e: dict) -> str:
    """One line for an ``engine_latency`` result (count > 0), as the benches print it."""
    return (f"{e['count']} requests, arrival at the ingress to reply sent, "
            f"risk_eval_duration_seconds buckets: p50 <= {e['p50_le_ms']:g} ms, "
            f"p99 <= {e['p99_le_ms']:g} ms, max <= {e['max_le_ms']:g} ms")
