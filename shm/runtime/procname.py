"""Process titles: every engine process names itself `risk-engine: <role>` so that `ps`,
`pgrep -f` and scripts/pin_workers.sh can tell them apart."""
from __future__ import annotations

import ctypes
import signal

try:
    import setproctitle
except ImportError:           # pragma: no cover - setproctitle is an install requirement
    setproctitle = None

PREFIX = "risk-engine: "


def set_role(role: str) -> None:
    if setproctitle is not None:
        setproctitle.setproctitle(PREFIX + role)


def name_thread(name: str) -> None:
    """Name the calling thread for `top -H`, `ps -L` and the bench's per-thread CPU
    (the kernel keeps 15 bytes); other threads inherit the process title's first 15."""
    try:
        setproctitle.setthreadtitle(name[:15])
    except AttributeError:    # pragma: no cover - setproctitle missing or < 1.2
        pass


def become_child(role: str) -> None:
    """Set-up of every process the supervisor starts: name it; leave SIGINT/SIGTERM to the
    supervisor, which stops its children in order (a Ctrl-C or a systemd stop reaches the
    whole process group); and die with the supervisor if it is killed (PR_SET_PDEATHSIG), so
    no child ever outlives its engine."""
    set_role(role)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):                    # not Linux: best effort
        pass
