"""Start a real ``risk-engine serve`` for a test or a bench run, and read what it reports.

    with EngineProcess(tmp_path, workers=2) as eng:     # tests: stopped with SIGTERM, exit
        eng.endpoint            # tcp://127.0.0.1:PORT    # code 0 and no /dev/shm left checked
        eng.metrics_url         # http://127.0.0.1:PORT/metrics

    eng = EngineProcess(config=path, workers=None).start()    # bench: config file as given
    try: ... finally: rc = eng.close()

Each engine has its own instance, ports and config file (``raw``: the mapping to start from,
default the bundled config or ``config``, with ``overrides`` per section); journal and
snapshots go under ``tmp_path`` (default: a private temporary directory that ``close()``
removes, so a bench run leaves no journal behind). Its stdout and stderr go to one log file
(``output()``), shown when start-up fails (the first start compiles the rule kernel: allow
minutes on a busy machine). The one harness for tests and bench: bench/ sits above
everything and tests may import it, never the reverse.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import yaml

from shm.runtime.config import portable_raw
from shm.runtime.rundir import remove_dead_run_dir, run_dir_for
from shm.segment import reclaim_stale

READY_PREFIX = "risk-engine: serving"
READY_TIMEOUT_S = 300
REPO = Path(__file__).resolve().parents[1]


_PORT_BLOCK = 2000
_port_seq = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago. Under pytest-xdist each worker
    draws from its own block below the ephemeral range (32768-), so a port handed to one
    worker's engine is never handed to another's before that engine binds it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    base = 20000 + int(worker[2:]) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_port_seq) % _PORT_BLOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + _PORT_BLOCK - 1} worker={worker}")


def shm_entries(instance: str) -> list[str]:
    """The /dev/shm segments of ``instance``."""
    return [e for e in os.listdir("/dev/shm") if f"risk-engine.{instance}." in e]


class EngineProcess:
    """``tmp_path``: where the config, log, journal and snapshots go (default: a temporary
    directory of its own, removed by ``close()``); ``workers``: workers.count (None: the
    config's); ``raw``: the config mapping to start from (default: ``portable_raw(config)``);
    ``command``: what runs ``serve`` (default: this interpreter on this checkout, from ``cwd``);
    ``env``: its whole environment (default: ours); ``prefix``: e.g. ("prlimit", ...).

    ``own_session``: the engine gets its own session (tests). A bench passes False: the engine
    then has its own process group only (a terminal's Ctrl-C still reaches just the bench, and
    kill() signals the group) but stays in the bench's scheduler autogroup
    (kernel.sched_autogroup_enabled=1 here); in a session of its own CFS splits the 2 CPUs
    between the engine's autogroup and the load generator's, capping the engine near half the
    machine (docs/BENCH.md)."""

    def __init__(self, tmp_path: Path | str | None = None, workers: int | None = 1,
                 overrides: dict | None = None, metrics: bool = True, extra_args: tuple = (),
                 prefix: tuple = (), raw: dict | None = None, config: str | None = None,
                 command: tuple = (sys.executable, "-m", "engine.cli"), cwd: Path = REPO,
                 env: dict | None = None, ready_timeout_s: float = READY_TIMEOUT_S,
                 own_session: bool = True):
        self.owns_tmp = tmp_path is None
        self.tmp = Path(tempfile.mkdtemp(prefix="risk-engine-run-") if tmp_path is None else tmp_path)
        self.instance = "t" + uuid.uuid4().hex[:10]
        self.port = free_port()
        self.metrics_port = free_port()
        self.metrics_enabled = metrics
        raw = copy.deepcopy(raw) if raw is not None else portable_raw(config)
        raw["instance"] = self.instance
        raw["ingress"] = {**(raw.get("ingress") or {}), "bind": self.endpoint}
        raw["metrics"] = {**(raw.get("metrics") or {}), "bind": f"127.0.0.1:{self.metrics_port}",
                          "enabled": metrics}
        if workers is not None:
            raw["workers"] = {**(raw.get("workers") or {}), "count": workers}
        raw["journal"] = {**(raw.get("journal") or {}), "dir": str(self.tmp / self.instance / "journal")}
        raw["snapshot"] = {**(raw.get("snapshot") or {}), "dir": str(self.tmp / self.instance / "snapshots")}
        loop = os.environ.get("RISK_ENGINE_TEST_COMPILED_LOOP")   # a suite run with it on (1)
        if loop in ("0", "1"):                                      # or off (0)
            raw["ingress"]["compiled_loop"] = loop == "1"
        for section, vals in (overrides or {}).items():
            if isinstance(vals, dict) and isinstance(raw.get(section), dict):
                raw[section].update(vals)
            else:
                raw[section] = vals
        self.config_path = self.tmp / f"{self.instance}.yaml"
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.raw = raw
        self.extra_args = extra_args
        self.prefix = prefix
        self.command, self.cwd, self.env = command, cwd, env
        self.ready_timeout_s = ready_timeout_s
        self.own_session = own_session
        self.log_path = self.tmp / f"{self.instance}.log"
        self.proc: subprocess.Popen | None = None
        self.ready_line = ""
        self._closed_output: str | None = None

    @property
    def state_dir(self) -> Path:
        """Journal and snapshots (unless ``overrides`` moved them)."""
        return self.tmp / self.instance

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def admin_bind(self) -> str:
        return f"ipc://{run_dir_for(self.instance)}/admin.sock"

    @property
    def metrics_bind(self) -> str:
        """HOST:PORT of /metrics and /stats."""
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics_bind}/metrics"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def launch(self) -> "EngineProcess":
        """Start ``serve`` and return at once (start-up tests); ``start()`` also waits."""
        env = dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [*self.prefix, *self.command, "serve", "--config", str(self.config_path),
             *self.extra_args], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
            **({"start_new_session": True} if self.own_session else {"process_group": 0}))
        return self

    def serving(self) -> bool:
        """Has it printed its "serving" line (kept in ``ready_line``)?"""
        ready = [ln for ln in self.output().splitlines() if ln.startswith(READY_PREFIX)]
        if ready:
            self.ready_line = ready[0].strip()
        return bool(ready)

    def start(self) -> "EngineProcess":
        return self.launch().wait_serving()

    def wait_serving(self) -> "EngineProcess":
        """After ``launch()``: wait for the "serving" line (engines launched together start up
        overlapped); a start that fails or times out raises, as ``start()`` does."""
        t_end = time.monotonic() + self.ready_timeout_s
        try:
            while time.monotonic() < t_end:
                if self.serving():
                    return self
                if self.proc.poll() is not None:
                    raise RuntimeError(f"engine exited with {self.proc.returncode}:\n{self.output()}")
                time.sleep(0.05)
            raise RuntimeError(f"engine not ready in {self.ready_timeout_s} s:\n{self.output()}")
        except BaseException:
            # no engine (or what is left of its process group) outlives a start that failed,
            # Ctrl-C included; a caller that passed no tmp_path has no handle to clean up with
            self.kill()
            if self.owns_tmp:
                self.close()
            raise

    def output(self) -> str:
        """The engine's stdout and stderr so far."""
        if self._closed_output is not None:
            return self._closed_output
        return self.log_path.read_text()

    def stats(self) -> dict | None:
        return read_stats(self.metrics_bind) if self.metrics_enabled else None

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
        """Send ``sig`` and wait: the exit code. After ``timeout_s`` SIGKILL and raise."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor, ingress, workers), no clean-up: what
        a crash leaves stays (``close()`` removes it)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(60)

    def children(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def close(self, timeout_s: float = 60) -> int | None:
        """Stop the engine if it still runs (SIGTERM, SIGKILL after ``timeout_s``: -9), then
        remove what a killed engine leaves (its shared memory and run directory) and, when
        the temporary directory is its own, that directory. The exit code (None: never
        started). Safe to call again."""
        rc = None
        if self.proc is not None:
            try:
                rc = self.stop(timeout_s=timeout_s)
            except subprocess.TimeoutExpired:
                rc = -9
        reclaim_stale(self.instance)
        remove_dead_run_dir(self.instance)
        if self.proc is not None and not self.log.closed:
            self.log.close()
        if self.owns_tmp and self.tmp.exists():
            self._closed_output = self.output() if self.log_path.exists() else ""
            shutil.rmtree(self.tmp, ignore_errors=True)
        return rc

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            code = self.stop()
            if exc[0] is None:
                assert code == 0, f"engine exited with {code}:\n{self.output()}"
                assert shm_entries(self.instance) == [], shm_entries(self.instance)
        finally:
            self.close()


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
    """Worker steps slower than shm.control.STALL_NS between two ``/stats`` reads
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
