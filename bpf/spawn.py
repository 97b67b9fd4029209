"""Start the sidecar as a child process (for ``serve --ebpf`` and the tests).

    from bpf.spawn import start_sidecar, SidecarUnavailable
    try:
        sidecar = start_sidecar(port=5555, metrics="127.0.0.1:9109")
    except SidecarUnavailable as e:      # e.code: bpf.availability.Exit, str(e): one line
        ...expose risk_ebpf_enabled 0 and keep serving...
    ...
    sidecar.stop()

``start_sidecar`` runs ``check_ebpf()`` first (no child when it fails), then starts
``python -m bpf.sidecar`` and waits for its ``ready`` line. The child gets SIGTERM when
the thread that started it dies (PR_SET_PDEATHSIG is per thread: call it from the main
thread or one that lives as long as the engine), so it never outlives the engine.
``port_of_bind(cfg.ingress.bind)`` gives the port to watch.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time

from bpf.availability import Exit, check_ebpf
from bpf.sidecar import DEFAULT_METRICS


def port_of_bind(bind: str) -> int:
    """TCP port of a ZeroMQ bind address: 'tcp://127.0.0.1:5555' -> 5555.

    Raises SidecarUnavailable(Exit.USAGE) for non-TCP transports (ipc://, inproc://) or a
    wildcard port: the sidecar watches TCP sockets by local port only.
    """
    scheme, sep, rest = bind.partition("://")
    port = rest.rpartition(":")[2]
    if scheme != "tcp" or not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SidecarUnavailable(int(Exit.USAGE), f"ebpf unavailable: bind={bind!r} is not "
                                 "tcp://HOST:PORT with a fixed port")
    return int(port)


class SidecarUnavailable(RuntimeError):
    """The sidecar cannot run here; ``code`` is a bpf.availability.Exit value."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


class Sidecar:
    """A running sidecar child watching local TCP ``port``; ``metrics`` is the bound
    HOST:PORT of its endpoint (port 0 resolved)."""

    def __init__(self, proc: subprocess.Popen, port: int, metrics: str):
        self.proc = proc
        self.port = port
        self.metrics = metrics
        self.url = f"http://{metrics}/metrics"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after timeout_s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _forward(stream, out) -> None:
    for line in iter(stream.readline, b""):   # blocks; ends at the child's exit
        out.write(line.decode(errors="replace"))
        out.flush()
    stream.close()


def start_sidecar(port: int, metrics: str = DEFAULT_METRICS, max_conns: int = 4096,
                  ready_timeout_s: float = 30.0, python: str = sys.executable) -> Sidecar:
    """Start and wait until the sidecar serves metrics; raise SidecarUnavailable otherwise.

    ``metrics`` may use port 0 (any free port); the returned Sidecar names the real one.
    """
    missing = check_ebpf()
    if missing is not None:
        raise SidecarUnavailable(missing.code, missing.reason)
    cmd = [python, "-m", "bpf.sidecar", "--port", str(port), "--metrics", metrics,
           "--max-conns", str(max_conns), "--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + ready_timeout_s
    line = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if r:
            line = proc.stdout.readline()
            break
    if not line.startswith(b"ready "):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        reason = err[-1] if err else f"no ready line within {ready_timeout_s}s"
        code = proc.returncode if proc.returncode not in (None, 0) else int(Exit.LOAD_FAILED)
        raise SidecarUnavailable(code, reason)
    bound = line.decode().split("metrics=", 1)[1].strip()
    for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
        threading.Thread(target=_forward, args=(stream, out), daemon=True,
                         name="sidecar-output").start()
    return Sidecar(proc, port, bound)
