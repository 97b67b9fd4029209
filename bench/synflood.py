"""The SYN flood of bench.enforce (bench/synflood.c): built with gcc on first use, started in a
network namespace, stopped, and its one JSON line read back.

The binary is built and cached by bench.cbuild (``~/.cache/risk-engine/synflood/``, 0700).
"""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from bench import cbuild

SOURCE = Path(__file__).with_name("synflood.c")


class FloodError(RuntimeError):
    """The flood could not be built or run; the message says why."""


def build(cache_dir: Path | None = None) -> Path:
    """The sender, built on first use (bench.cbuild); GccMissing or RuntimeError if it cannot be."""
    return cbuild.build(SOURCE, "synflood", cache_dir, timeout_s=120)


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
