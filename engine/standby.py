"""The standby pool (workers.standby): one spare worker process that has imported, attached
and loaded the serving kernel already, so that a worker restart costs only its index-specific
part (engine.worker.standby). The supervisor hands it a worker index on its stdin.
"""
from __future__ import annotations

import subprocess
import time

from shm.control import Block

STANDBY_RESPAWN_S = 2.0      # after a standby took over a worker, wait this long for the next
STANDBY_BACKOFF_MAX_S = 300.0  # the longest wait after standbys kept dying by themselves
STOP_GRACE_S = 10


def standby_backoff_s(failures: int) -> float:
    """Wait before the next standby after ``failures`` in a row died by themselves:
    STANDBY_RESPAWN_S doubling per failure, at most STANDBY_BACKOFF_MAX_S."""
    return min(STANDBY_RESPAWN_S * 2 ** max(0, failures - 1), STANDBY_BACKOFF_MAX_S)


class StandbyPool:
    """At most one prepared spare worker. ``spawn(args, **popen_kw)`` starts a child of the
    supervisor (python -m args --run-dir D); ``block`` is the control block, where a ready
    standby writes its pid (supervisor.standby_pid)."""

    def __init__(self, enabled: bool, block: Block, spawn, log):
        self.enabled = enabled              # workers.standby
        self.block = block
        self.spawn = spawn
        self.log = log
        self.process: subprocess.Popen | None = None   # the spare worker, ready or loading
        self.due_s = 0.0                    # time.monotonic() when to start the next one
        self.failures = 0                   # standbys that died by themselves in a row

    def start(self) -> None:
        """A spare worker that imports, attaches and loads the kernel now."""
        self.process = self.spawn(["engine.worker", "--standby"], stdin=subprocess.PIPE, text=True)

    def ready(self) -> bool:
        sb = self.process
        return sb is not None and sb.poll() is None and \
            int(self.block.view("supervisor.standby_pid")[0]) == sb.pid

    def take(self, w: int) -> subprocess.Popen | None:
        """Hand worker index ``w`` to the prepared standby; None when there is none ready."""
        if not self.ready():
            return None
        sb, self.process = self.process, None
        self.block.view("supervisor.standby_pid")[0] = 0
        self.due_s = time.monotonic() + STANDBY_RESPAWN_S
        try:
            sb.stdin.write(f"{w}\n")
            sb.stdin.close()
        except OSError:                    # it died just now: start a worker the slow way
            return None
        return sb

    def retire(self) -> None:
        """After a reload (its kernel is stale) and at shutdown. A ready standby reads EOF on
        its stdin and exits; one still loading is killed rather than waited for (it writes
        nothing shared; the supervisor's loop must not block on it). The next one starts
        STANDBY_RESPAWN_S later."""
        ready = self.ready()
        sb, self.process = self.process, None
        self.block.view("supervisor.standby_pid")[0] = 0
        self.due_s = time.monotonic() + STANDBY_RESPAWN_S
        if sb is None:
            return
        try:
            sb.stdin.close()
            if ready:
                sb.wait(STOP_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if sb.poll() is None:
            sb.kill()
        sb.wait()

    def keep(self) -> None:
        """Start a standby when there is none (used, retired, or died), not sooner than
        STANDBY_RESPAWN_S after the last was used: its start-up would compete for the CPU
        with the worker that just took over. One that dies by itself is replaced after
        standby_backoff_s(its failures in a row): a start-up that keeps failing costs about
        a second of CPU each time, and must not run in a loop."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self.process is not None and self.process.poll() is not None:
            self.failures += 1
            self.due_s = now + standby_backoff_s(self.failures)
            self.log(f"risk-engine: standby worker (pid {self.process.pid}) exited with code "
                     f"{self.process.returncode}; another in {self.due_s - now:.0f} s")
            self.process = None
        elif self.ready():
            self.failures = 0
        if self.process is None and now >= self.due_s:
            self.start()

    def kill(self) -> None:
        """Cleanup after a failed start or at the end: the spare, if any, is killed."""
        sb = self.process
        if sb is not None and sb.poll() is None:
            sb.kill()
            sb.wait()
