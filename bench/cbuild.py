"""Build one of the bench's C programs (bench/loadgen.c, bench/synflood.c) with gcc, once per
source: the binary is cached under ``~/.cache/risk-engine/<name>/<name>-<hash>``. That
directory holds code we execute (as root in CI), so it is created 0700 and refused if another
user owns it or can write it (shm.runtime.securedir)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from shm.runtime.securedir import ensure_private_dir


class GccMissing(RuntimeError):
    """No C compiler (the load generator's callers fall back to the Python one)."""


def cache_dir_for(name: str) -> Path:
    return Path.home() / ".cache" / "risk-engine" / name


def build(source: Path, name: str, cache_dir: Path | None = None, link: tuple[str, ...] = (),
          key_extra: bytes = b"", timeout_s: float = 300) -> Path:
    """``source`` compiled (-O2, warnings on) with ``link`` arguments after it; the cache key
    hashes the source and ``key_extra`` (what else the binary depends on). Raises GccMissing,
    or RuntimeError with gcc's output when the build fails."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise GccMissing(f"gcc not found on PATH={os.environ.get('PATH', '')}: cannot build "
                         f"{source.name} (apt-get install gcc)")
    key = hashlib.blake2b(source.read_bytes() + key_extra, digest_size=8).hexdigest()
    d = ensure_private_dir(cache_dir or cache_dir_for(name), f"{name} cache")
    exe = d / f"{name}-{key}"
    if exe.is_file():
        return exe
    tmp = d / f".build-{os.getpid()}-{key}"
    r = subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(source), *link],
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"gcc failed: rc={r.returncode} source={source} {' '.join(link)}\n{r.stderr}")
    os.chmod(tmp, 0o700)
    os.replace(tmp, exe)                # atomic: a concurrent build publishes the same bytes
    return exe
