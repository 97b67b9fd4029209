"""Start a real `risk-engine serve` for a test: its own instance, ports and config file.

    with EngineProcess(tmp_path, workers=2) as eng:
        eng.endpoint            # tcp://127.0.0.1:PORT
        eng.metrics_url         # http://127.0.0.1:PORT/metrics
    # stopped with SIGTERM; the exit code and the /dev/shm clean-up are checked

The engine's stdout/stderr go to a log file in tmp_path, shown when start-up fails.
"""
from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from engine.config import portable_raw
from engine.rundir import remove_dead_run_dir, run_dir_for

READY_TIMEOUT_S = 240
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_entries(instance: str) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if f"risk-engine.{instance}." in e]


class EngineProcess:
    """``raw``: the config mapping to start from (default: the bundled one, portable_raw());
    ``command``: what runs ``serve`` (default: this interpreter on this checkout, from ``cwd``);
    ``env``: its whole environment (default: ours)."""

    def __init__(self, tmp_path: Path, workers: int = 1, overrides: dict | None = None,
                 metrics: bool = True, extra_args: tuple = (), prefix: tuple = (),
                 raw: dict | None = None, command: tuple = (sys.executable, "-m", "engine.cli"),
                 cwd: Path = REPO, env: dict | None = None, ready_timeout_s: float = READY_TIMEOUT_S):
        self.tmp = Path(tmp_path)
        self.instance = "t" + uuid.uuid4().hex[:10]
        self.port = free_port()
        self.metrics_port = free_port()
        raw = copy.deepcopy(raw) if raw is not None else portable_raw()
        raw["instance"] = self.instance
        raw["ingress"]["bind"] = f"tcp://127.0.0.1:{self.port}"
        raw["metrics"] = {"bind": f"127.0.0.1:{self.metrics_port}", "enabled": metrics}
        raw["workers"] = {"count": workers}
        raw["journal"] = {"dir": str(self.tmp / self.instance / "journal")}
        raw["snapshot"] = {"dir": str(self.tmp / self.instance / "snapshots")}
        for section, vals in (overrides or {}).items():
            if isinstance(vals, dict) and isinstance(raw.get(section), dict):
                raw[section].update(vals)
            else:
                raw[section] = vals
        self.config_path = self.tmp / f"{self.instance}.yaml"
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.raw = raw
        self.extra_args = extra_args
        self.prefix = prefix                  # e.g. ("numactl", "--cpunodebind=0", ...)
        self.command, self.cwd, self.env = command, cwd, env
        self.ready_timeout_s = ready_timeout_s
        self.log_path = self.tmp / f"{self.instance}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def admin_bind(self) -> str:
        return f"ipc://{run_dir_for(self.instance)}/admin.sock"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "EngineProcess":
        env = dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [*self.prefix, *self.command, "serve", "--config", str(self.config_path),
             *self.extra_args], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
            start_new_session=True)
        t_end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < t_end:
            if "risk-engine: serving" in self.log_path.read_text():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"engine not ready in {self.ready_timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor, ingress, workers)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def children(self) -> list[int]:
        import psutil
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            code = self.stop()
            if exc[0] is None:
                assert code == 0, f"engine exited with {code}:\n{self.output()}"
                assert shm_entries(self.instance) == [], shm_entries(self.instance)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.kill()
            from shm.segment import reclaim_stale
            reclaim_stale(self.instance)
            remove_dead_run_dir(self.instance)
            self.log.close()
