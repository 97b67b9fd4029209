"""Can this process run the eBPF sidecar? Cheap checks, no compilation, no bcc import.

``check_ebpf()`` returns ``None`` when every precondition holds, else an ``Unavailable``
(exit code + one-line reason). The sidecar exits with that code; ``serve --ebpf`` calls
the same function first and exposes ``risk_ebpf_enabled 0`` instead of failing.

Exit codes of ``risk-engine sidecar`` (stable, see docs/EBPF.md):
  0 stopped by SIGTERM/SIGINT      2 bad arguments           3 not root
  4 bcc (python3-bpfcc) missing    5 kernel headers missing  6 tracefs / tracepoint missing
  7 compile, load or attach failed 8 metrics address could not be bound
"""
from __future__ import annotations

import enum
import importlib.util
import os
from dataclasses import dataclass


class Exit(enum.IntEnum):
    OK = 0
    USAGE = 2
    NOT_ROOT = 3
    NO_BCC = 4
    NO_HEADERS = 5
    NO_TRACEFS = 6
    LOAD_FAILED = 7
    METRICS_BIND = 8


TRACEPOINTS = ("tcp/tcp_probe", "tcp/tcp_retransmit_skb", "sock/inet_sock_set_state",
               "sock/sock_send_length", "sock/sock_recv_length")
TRACEFS_DIRS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")   # bcc 0.26 tries both


@dataclass(frozen=True)
class Unavailable:
    code: Exit
    reason: str

    def __str__(self) -> str:
        return self.reason


def _bcc_origin() -> str | None:
    spec = importlib.util.find_spec("bcc")
    return spec.origin if spec and spec.origin else None


def check_ebpf(root: str = "/", euid: int | None = None, release: str | None = None,
               bcc_origin: str | None = "auto", tracepoints: bool = True) -> Unavailable | None:
    """None if the sidecar can start here, else the first missing precondition.
    ``tracepoints=False``: packet programs only (enforcement), tracefs not needed.

    ``root``, ``euid``, ``release`` and ``bcc_origin`` default to this machine; tests pass a
    fake tree. Debian's bcc is recognised by ``bcc/libbcc.py`` next to ``__init__.py``
    (PyPI's unrelated package named ``bcc`` has no such file).
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return Unavailable(Exit.NOT_ROOT, f"ebpf unavailable: not root (euid={euid}); "
                           "run as root after scripts/install_ebpf.sh")
    origin = _bcc_origin() if bcc_origin == "auto" else bcc_origin
    if not origin:
        return Unavailable(Exit.NO_BCC, "ebpf unavailable: python module bcc not found "
                           "(apt-get install python3-bpfcc; scripts/link_bcc.sh VENV)")
    if not os.path.exists(os.path.join(os.path.dirname(origin), "libbcc.py")):
        return Unavailable(Exit.NO_BCC, f"ebpf unavailable: bcc at {origin} is not Debian's "
                           "python3-bpfcc (PyPI 'bcc' is an unrelated package)")
    release = release or os.uname().release
    build = os.path.join(root, "lib/modules", release, "build")
    if not os.path.isdir(os.path.join(build, "include")):
        return Unavailable(Exit.NO_HEADERS, f"ebpf unavailable: no kernel headers at {build} "
                           "(run scripts/install_ebpf.sh)")
    if not tracepoints:
        return None
    tracefs = next((os.path.join(root, d) for d in TRACEFS_DIRS
                    if os.path.isdir(os.path.join(root, d, "events"))), None)
    if tracefs is None:
        return Unavailable(Exit.NO_TRACEFS, "ebpf unavailable: tracefs not mounted at "
                           f"{os.path.join(root, TRACEFS_DIRS[0])}")
    for tp in TRACEPOINTS:
        if not os.path.isdir(os.path.join(tracefs, "events", tp)):
            return Unavailable(Exit.NO_TRACEFS, f"ebpf unavailable: tracepoint={tp} "
                               f"missing under {tracefs}/events")
    return None
