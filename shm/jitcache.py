"""Numba's on-disk cache (``cache=True``) is checked against the function's own source file
only: code it inlined or called from another file stays cached after that file changes.
After an upgrade that changes, say, shm/features/table.py, shm/features/windows.py
would keep running the old table code, and the two could disagree on a slot's layout.

``invalidate_stale()`` runs when ``shm`` is imported (every process that compiles imports
it first): it hashes the project's compiled sources (the files under ``PACKAGES`` that use
Numba, or define a layout whose constants kernels compile in) and compares the digest with the one recorded beside the caches. On a difference it
deletes every Numba cache file of the project (``*.nbi``, ``*.nbc`` in its ``__pycache__``
directories, ``bench/`` and, in a checkout, ``tests/``: their functions inline the engine's),
so each function compiles once more, and records the new digest. Numba tolerates a cache
file that disappears under it (it compiles instead), so concurrent starts are safe.

The generated rule kernels are keyed by the hashes of the sources they inline already
(rules/cache.py); a ``NUMBA_CACHE_DIR`` outside the tree is not swept (docs/RULES.md,
"Kernel cache").
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shm", "engine", "rules", "ingress")    # whose sources compiled code inlines
STAMP = Path("shm") / "__pycache__" / "numba-sources.digest"
# a file whose module-level ints kernels freeze (a layout built with shm.descriptor) is a
# source of compiled code as much as one with @njit in it
_MARKERS = (b"njit", b"@intrinsic", b"numba", b"shm.descriptor")


def sweep_dirs(root: Path) -> tuple:
    """The directories whose ``__pycache__`` hold the project's Numba caches. ``tests`` only
    in a source checkout (setup.py beside the packages): an installed copy sits in
    site-packages, where a top-level ``tests`` belongs to some other project."""
    return PACKAGES + ("bench",) + (("tests",) if (root / "setup.py").exists() else ())


def sources_digest(root: Path = ROOT, packages=PACKAGES) -> str:
    """Hash of the paths and contents of the Python files under ``packages`` that use Numba."""
    h = hashlib.blake2b(digest_size=16)
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            data = path.read_bytes()
            if any(m in data for m in _MARKERS):
                h.update(str(path.relative_to(root)).encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def invalidate_stale(root: Path = ROOT, packages=PACKAGES, sweep=None) -> int:
    """Delete the project's Numba cache files if the compiled sources changed since the
    digest was recorded (or none was). Returns how many files were deleted; 0 and no change
    when the tree is not writable (an installed copy whose caches live elsewhere)."""
    stamp = root / STAMP
    digest = sources_digest(root, packages)
    try:
        if stamp.read_text() == digest:
            return 0
    except OSError:
        pass
    removed = 0
    for pkg in sweep if sweep is not None else sweep_dirs(root):
        for cache_dir in (root / pkg).rglob("__pycache__"):
            for f in cache_dir.iterdir():
                if f.suffix in (".nbi", ".nbc"):
                    try:
                        f.unlink()
                        removed += 1
                    except OSError:
                        pass
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:
        pass
    return removed
