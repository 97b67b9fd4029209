"""Process titles: every engine process names itself `risk-engine: <role>` so that `ps`,
`pgrep -f` and scripts/pin_workers.sh can tell them apart."""
from __future__ import annotations

import ctypes
import signal

import setproctitle

PREFIX = "risk-engine: "


def set_role(role: str) -> None:
    setproctitle.setproctitle(PREFIX + role)


def name_thread(name: str) -> None:
    """Name the calling thread for `top -H`, `ps -L` and the bench's per-thread CPU
    (the kernel keeps 15 bytes); other threads inherit the process title's first 15."""
    try:
        setproctitle.setthreadtitle(name[:15])
    except AttributeError:   # pragma: no cover - setproctitle < 1.2
        pass


def become_child(role: str) -> None:
    """Set-up of every process the supervisor starts: name it; leave SIGINT/SIGTERM to the
    supervisor, which stops its children in order (a Ctrl-C or a systemd stop reaches the
    whole process group); and die with the supervisor if it is killed (PR_SET_PDEATHSIG), so
    no child ever outlives its engine. The supervisor starts a child with SIGINT and SIGTERM
    blocked (engine.stopsignals), so none can end it before this: once they are ignored they
    are unblocked, and one that arrived meanwhile is discarded."""
    set_role(role)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):                    # not Linux: best effort
        pass
