"""The newcomer's path (issue 25): a fresh clone, `make run` with a cold kernel cache, and
`risk-engine eval` from another terminal gets a decision made by the rules on its first try;
Ctrl-C then stops it with one line and leaves no shared memory.

Slow (marked ``slow``: `make test-slow`): `make run` makes the clone's venv and installs into
it from the package registry (pip's cache when it has the files), then compiles every kernel
cold. The clone is of this checkout's HEAD commit. Its config names only what must differ
from the bundled one (a config overlays it): the instance, the two TCP ports; journal and
snapshots go to $STATE_DIRECTORY in the test's directory, so nothing of a real `re` instance
on the machine is touched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from bench.engine_proc import READY_PREFIX, REPO, free_port, shm_entries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SERVING_TIMEOUT_S = 1800    # pip install of numba/numpy/pyzmq plus every cold compile, loaded machine
STOP_TIMEOUT_S = 120


class Output:
    """A process's merged stdout/stderr lines, read on a thread so a full pipe never blocks it."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, prefix: str, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                hit = next((ln for ln in self.lines if ln.startswith(prefix)), None)
                left = deadline - time.monotonic()
                if hit or left <= 0 or not self.thread.is_alive():
                    return hit
                self.cond.wait(min(left, 5))

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines[-80:])


def test_fresh_clone_make_run_then_eval_is_decided_by_the_rules(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=300)
    instance = f"nc{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.yaml"
    config.write_text(f'instance: {instance}\n'
                      f'ingress: {{bind: "tcp://127.0.0.1:{free_port()}"}}\n'
                      f'metrics: {{bind: "127.0.0.1:{free_port()}"}}\n')
    home = tmp_path / "home"            # no kernel cache, no user config of ours
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "STATE_DIRECTORY": str(tmp_path / "state"),
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("VIRTUAL_ENV", None)
    make = subprocess.Popen(["make", "run", f"CONFIG={config}"], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = Output(make)
    try:
        serving = out.wait_for(READY_PREFIX, SERVING_TIMEOUT_S)
        assert serving, f"no '{READY_PREFIX}' line; make run printed:\n{out.text()}"
        ev = subprocess.run([str(clone / ".venv/bin/risk-engine"), "eval", "--config", str(config),
                             "--json", "account_id=42", "card_id=7", "amount=250", "currency=EUR",
                             "country=FR", "mcc=5411", "channel=1", f"ts_ms={int(time.time() * 1000)}",
                             "ip=203.0.113.7"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert ev.returncode == 0, f"eval exited {ev.returncode}: {ev.stderr}\nengine:\n{out.text()}"
        d = json.loads(ev.stdout)
        # 203.0.113.7 is in the bundled blocked_ips list: the rules block it, not a default
        assert d["error"] in (None, ""), d
        assert d["action"] == "block" and "blocked_ip" in d["rules"] and d["generation"] >= 1, d
        assert not any("TIMEOUT" in f for f in d["flags"]), d
    finally:
        os.killpg(make.pid, signal.SIGINT)          # Ctrl-C in make run's terminal
        try:
            make.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(30)
        out.thread.join(30)
    assert out.wait_for("risk-engine: stopped", 0), f"no stop line:\n{out.text()}"
    assert "Traceback" not in out.text(), out.text()
    assert shm_entries(instance) == []
