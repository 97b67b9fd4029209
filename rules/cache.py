"""Pass 6 support: the kernel cache directory.

A generated module is written once as ``k_<source hash>_<schema hash>_nb<numba>.py`` in the
cache directory and imported from there, so Numba's ``cache=True`` can locate it and a
restart loads the compiled kernel instead of compiling (exec'd code cannot be
cached). The file is published with a hard link (never replaced), so its
mtime, which Numba's cache index checks, never changes under a running process.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from shm.runtime.securedir import ensure_private_dir


def default_cache_dir() -> Path:
    env = os.environ.get("RISK_ENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "risk-engine" / "kernels"


def source_hash(source: str) -> str:
    return hashlib.blake2b(source.encode(), digest_size=8).hexdigest()


def module_name(src_hash: str, schema_hash: int, numba_version: str) -> str:
    nb = "".join(c if c.isalnum() else "_" for c in numba_version)
    return f"k_{src_hash}_{schema_hash:016x}_nb{nb}"


def write_module(cache_dir: Path, name: str, source: str) -> Path:
    """Write ``source`` as ``cache_dir/name.py`` unless an identical file exists. The
    directory holds code this process imports: it is created 0700, and one that another user
    owns or can write is refused (shm.runtime.securedir.UnsafePathError)."""
    ensure_private_dir(cache_dir, "kernel cache (RISK_ENGINE_CACHE)")
    path = cache_dir / f"{name}.py"
    if path.exists():
        try:
            if path.read_text() == source:
                return path
        except OSError:
            pass
        path.unlink(missing_ok=True)   # corrupt or foreign content: replace it
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp_", suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        try:
            os.link(tmp, path)         # atomic publish; fails if a peer won the race
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return path


def import_module(path: Path, name: str):
    """Import the generated module (once per process)."""
    mod_name = f"risk_kernel_{name}"
    mod = sys.modules.get(mod_name)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return mod
