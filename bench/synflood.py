"""The SYN flood of bench.enforce (bench/synflood.c): built with gcc on first use, started in a
network namespace, stopped, and its one JSON line read back.

The binary is cached as ``~/.cache/risk-engine/synflood/synflood-<hash of the source>``: that
directory holds code we execute (as root here), so it is created 0700 and refused if another
user owns it or can write it (shm.runtime.securedir), as bench/cload.py does for the load
generator.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from shm.runtime.securedir import ensure_private_dir

SOURCE = Path(__file__).with_name("synflood.c")


class FloodError(RuntimeError):
    """The flood could not be built or run; the message says why."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "risk-engine" / "synflood"


def build(cache_dir: Path | None = None) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FloodError(f"gcc not found on PATH={os.environ.get('PATH', '')}: cannot build "
                         f"{SOURCE.name} (apt-get install gcc)")
    key = hashlib.blake2b(SOURCE.read_bytes(), digest_size=8).hexdigest()
    d = ensure_private_dir(cache_dir or default_cache_dir(), "syn flood cache")
    exe = d / f"synflood-{key}"
    if exe.is_file():
        return exe
    tmp = d / f".build-{os.getpid()}-{key}"
    r = subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise FloodError(f"gcc failed: rc={r.returncode} source={SOURCE}\n{r.stderr}")
    os.chmod(tmp, 0o700)
    os.replace(tmp, exe)                # atomic: a concurrent build publishes the same bytes
    return exe


class Flood:
    """One run of the sender: ``start()``, then ``wait()`` (it stops at its own bounds) or
    ``stop()`` (SIGTERM now); both return its document. ``kill()`` on every error path."""

    def __init__(self, exe: Path, prefix: list[str], source: str, dest: str, port: int,
                 count: int, seconds: float, pps: int = 0):
        self.argv = [*prefix, str(exe), "--source", source, "--dest", dest, "--port", str(port),
                     "--count", str(int(count)), "--seconds", repr(float(seconds)), "--pps", str(int(pps))]
        self.seconds = seconds
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Flood":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        return self

    def wait(self) -> dict:
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise FloodError(f"synflood did not stop within its --seconds {self.seconds} + 30 s") from None
        if self.proc.returncode != 0 or not out.strip():
            raise FloodError(f"synflood failed: rc={self.proc.returncode} stderr={err.strip()[-500:]!r}")
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
