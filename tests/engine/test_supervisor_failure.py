"""A defect in the supervisor's loop stops the engine in order instead of killing it.

The fault is real, not a hook: status.json is replaced by a directory, so the loop's next
status write (after it restarts a killed worker) raises IsADirectoryError. Before, the
supervisor died with a traceback, its children died with it (PR_SET_PDEATHSIG) and every
/dev/shm segment stayed until the next start reclaimed it.
"""
from __future__ import annotations

import os
import signal
import time

import psutil

from bench.engine_proc import EngineProcess, shm_entries
from shm.runtime.rundir import run_dir_for

EXIT_TIMEOUT_S = 120


def _workers(eng: EngineProcess) -> list[psutil.Process]:
    return [p for p in psutil.Process(eng.pid).children()
            if "worker" in " ".join(p.cmdline())]


def test_an_exception_in_the_loop_stops_in_order(tmp_path):
    eng = EngineProcess(tmp_path, workers=1).start()
    try:
        children = [psutil.Process(pid) for pid in eng.children()]
        status = run_dir_for(eng.instance) / "status.json"
        status.unlink()
        status.mkdir()
        (status / "occupied").write_text("")
        worker = _workers(eng)
        assert worker, eng.children()
        os.kill(worker[0].pid, signal.SIGKILL)     # the restart changes status.json's content
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while eng.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        rc = eng.proc.poll()
        out = eng.output()
        assert rc == 70, f"exit {rc}:\n{out}"
        assert "stopped (supervisor failed: IsADirectoryError" in out, out
        assert shm_entries(eng.instance) == [], shm_entries(eng.instance)
        assert not run_dir_for(eng.instance).exists()
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        eng.close()
