"""SIGINT, SIGTERM and SIGHUP in the supervisor, from before its first segment exists.

While the engine starts, a stop signal raises StopRequested in the main thread wherever
start-up is (a compile, a journal replay, the wait for the workers), so the supervisor
unwinds, stops what it started and removes every segment, as a stop while serving does;
without this, SIGTERM's default action ended the process with -15 and left /dev/shm full.
Once serving, signals are only recorded, and the supervisor's loop handles them.

A child is spawned with SIGINT and SIGTERM blocked (``spawning``): the mask survives the
exec, so a Ctrl-C or a systemd stop that reaches the whole process group cannot kill a child
before it has set those signals to ignored (shm.runtime.procname.become_child, which then
unblocks them: a pending one is discarded). The same block keeps the supervisor from
unwinding between the fork and the Popen object that lets it stop that child.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager

STOPS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """A stop signal arrived during start-up (a BaseException, like KeyboardInterrupt: no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, sig: int):
        super().__init__(signal.Signals(sig).name)
        self.sig = sig


class StopSignals:
    """Installs the handlers at construction. ``serving()``: from now on only record.
    ``pending``: the signals recorded and not yet taken by the loop (``take``)."""

    def __init__(self):
        self.pending: list[int] = []
        self.stop_sig = 0                   # the first stop signal received (0: none)
        self._raise = True                  # start-up: a stop signal raises StopRequested
        self._spawning = 0
        for s in (*STOPS, signal.SIGHUP):
            signal.signal(s, self._handle)

    def _handle(self, sig: int, _frame) -> None:
        if sig in STOPS and not self.stop_sig:
            self.stop_sig = sig
        self.pending.append(sig)
        if sig in STOPS and self._raise and not self._spawning:
            self._raise = False             # once: the clean-up must not be interrupted
            raise StopRequested(sig)

    def serving(self) -> None:
        """Start-up is over: signals are recorded for the loop. A stop that arrived while a
        child was being spawned, at the very end of start-up, is raised now."""
        raise_now = self._raise and self.stop_sig
        self._raise = False
        if raise_now:
            raise StopRequested(self.stop_sig)

    def hold(self) -> None:
        """Stopping: further signals are recorded, never raised."""
        self._raise = False

    def take(self) -> int | None:
        return self.pending.pop(0) if self.pending else None

    @contextmanager
    def spawning(self):
        """Block SIGINT/SIGTERM around a child's fork and exec (module doc); a stop that
        arrived meanwhile is raised (start-up) or recorded (serving) once it is unblocked."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        self._spawning += 1
        try:
            yield
        finally:
            self._spawning -= 1
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if self._raise and self.stop_sig and not self._spawning:
            self._raise = False
            raise StopRequested(self.stop_sig)
