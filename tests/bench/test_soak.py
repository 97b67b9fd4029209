"""The soak's measurements (bench.soak, bench.engine_proc) on real processes and a real
directory (the full soak is `make soak`)."""
from __future__ import annotations

import os
import subprocess
import sys

import mmap

from bench.engine_proc import engine_memory
from bench.soak import shm_bytes


def test_shm_bytes_counts_only_the_instance(tmp_path):
    (tmp_path / "risk-engine.soaka.1.req0").write_bytes(b"x" * 4096)
    (tmp_path / "sem.risk-engine.soaka.1.bell").write_bytes(b"y" * 32)
    (tmp_path / "risk-engine.other.1.req0").write_bytes(b"z" * 999)
    assert shm_bytes("soaka", str(tmp_path)) == 4096 + 32


def test_engine_memory_covers_the_process_tree_and_its_leak_figure_leaves_shared_pages_out(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mem = engine_memory(os.getpid())
        assert len(mem) >= 2 and all(rss >= anon > 0 for rss, anon in mem.values())
        assert any(f"pid {child.pid}" in k for k in mem)
        me = next(k for k in mem if f"pid {os.getpid()}" in k)
        path = tmp_path / "mapped"
        path.write_bytes(b"\1" * (32 << 20))          # 32 MiB of page cache, mapped and read
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
            after = engine_memory(os.getpid())[me]
        assert after[0] - mem[me][0] >= 24 << 20       # RSS counts the mapped file pages
        assert after[1] - mem[me][1] < 8 << 20         # the leak check does not
    finally:
        child.kill()
        child.wait()
