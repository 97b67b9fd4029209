"""Soak helpers on real processes and a real directory (the full soak is `make soak`)."""
from __future__ import annotations

import os
import subprocess
import sys

from bench.soak import engine_rss, shm_bytes


def test_shm_bytes_counts_only_the_instance(tmp_path):
    (tmp_path / "risk-engine.soaka.1.req0").write_bytes(b"x" * 4096)
    (tmp_path / "sem.risk-engine.soaka.1.bell").write_bytes(b"y" * 32)
    (tmp_path / "risk-engine.other.1.req0").write_bytes(b"z" * 999)
    assert shm_bytes("soaka", str(tmp_path)) == 4096 + 32


def test_engine_rss_covers_the_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rss = engine_rss(os.getpid())
        assert len(rss) >= 2 and all(v > 0 for v in rss.values())
        assert any(f"pid {child.pid}" in k for k in rss)
    finally:
        child.kill()
        child.wait()
