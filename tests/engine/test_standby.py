"""The standby worker (workers.standby): a killed worker's index goes to the prepared spare,
a new spare follows, a rules reload replaces the spare (its kernel would be stale), and with
the option off a restart is a fresh process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from shm.runtime.config import load_config
from bench.engine_proc import EngineProcess
from tests.engine.test_reload import decide, ruleset, wait_label

READY = "worker standby"               # the title a standby takes once it is prepared


def roles(eng) -> dict[str, int]:
    """Process title (after 'risk-engine: ') -> pid, for the supervisor's children."""
    out = {}
    for c in psutil.Process(eng.proc.pid).children():
        try:
            title = " ".join(c.cmdline()).strip()     # setproctitle pads argv with empty strings
        except psutil.Error:
            continue
        if title.startswith("risk-engine: "):
            out[title[len("risk-engine: "):]] = c.pid
    return out


def wait_for(pred, timeout_s: float = 120):
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    return pred()


def test_standby_takes_over_a_killed_worker_and_a_reload_replaces_it(tmp_path):
    schema = load_config().schema
    v1 = ruleset(tmp_path / "v1.yaml", 1)
    eng = EngineProcess(tmp_path, workers=1, overrides={"rules": {"files": [v1]},
                                                         "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        spare = wait_for(lambda: roles(eng).get(READY))     # serving waits for it: there at once
        assert spare and roles(eng)["worker 0"] != spare
        os.kill(roles(eng)["worker 0"], signal.SIGKILL)
        assert wait_for(lambda: roles(eng).get("worker 0") == spare), roles(eng)
        assert all(d.ruleset == "live@1" and d.action == "review" for d in decide(eng, schema))
        assert wait_for(lambda: "worker 0 serving again" in eng.output()), eng.output()
        second = wait_for(lambda: roles(eng).get(READY))
        assert second and second != spare

        v2 = ruleset(tmp_path / "v2.yaml", 2, action="block")
        out = subprocess.run([sys.executable, "-m", "engine.cli", "reload", "--instance", eng.instance,
                              "--rules", v2], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert wait_label(eng, schema, "live@2")
        third = wait_for(lambda: roles(eng).get(READY) not in (None, second) and roles(eng).get(READY))
        assert third and second not in roles(eng).values()      # retired, not kept beside it
        os.kill(roles(eng)["worker 0"], signal.SIGKILL)
        assert wait_for(lambda: roles(eng).get("worker 0") == third), roles(eng)
        assert all(d.ruleset == "live@2" and d.action == "block" for d in decide(eng, schema))


def test_a_standby_that_dies_by_itself_is_replaced_after_a_backoff(tmp_path):
    with EngineProcess(tmp_path, workers=1) as eng:
        first = wait_for(lambda: roles(eng).get(READY))
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: f"standby worker (pid {first}) exited with code -9; another in 2 s"
                        in eng.output()), eng.output()
        second = wait_for(lambda: roles(eng).get(READY) not in (None, first) and roles(eng).get(READY))
        assert second and second != first
        assert len(decide(eng, load_config().schema)) == 3          # the worker never noticed


def test_standby_backoff_doubles_and_is_capped():
    from engine.standby import STANDBY_BACKOFF_MAX_S, STANDBY_RESPAWN_S, standby_backoff_s
    assert [standby_backoff_s(k) for k in (1, 2, 3)] == [STANDBY_RESPAWN_S, 2 * STANDBY_RESPAWN_S,
                                                        4 * STANDBY_RESPAWN_S]
    assert standby_backoff_s(60) == STANDBY_BACKOFF_MAX_S


def test_without_standby_a_restart_is_a_fresh_process(tmp_path):
    schema = load_config().schema
    eng = EngineProcess(tmp_path, workers=1, overrides={"workers": {"standby": False},
                                                         "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        r = roles(eng)
        assert not any(k.startswith("worker standby") for k in r), r
        old = r["worker 0"]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: roles(eng).get("worker 0") not in (None, old)), roles(eng)
        assert len(decide(eng, schema)) == 3
        time.sleep(2.5)                                  # past STANDBY_RESPAWN_S: still none
        assert not any(k.startswith("worker standby") for k in roles(eng))
