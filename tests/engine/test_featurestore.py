"""Fixed allocations that the machine cannot hold (feature tables, the idempotency window)
are refused at start with the parts named, before any segment exists; feature tables that
fit are reserved page by page at creation."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from shm.runtime.config import portable_raw
from shm.segment import list_names, reclaim_stale


def _serve(tmp_path, edit) -> subprocess.CompletedProcess:
    raw = portable_raw(None)
    edit(raw)
    raw["journal"] = {**raw["journal"], "dir": str(tmp_path / "j")}
    raw["snapshot"] = {**raw["snapshot"], "dir": str(tmp_path / "s")}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(raw))
    instance = f"big{os.getpid() % 100000}"
    try:
        p = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(path),
                            "--instance", instance, "--metrics", "off", "--bind", "tcp://127.0.0.1:0"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert not list_names(instance)              # refused before anything was created
        return p
    finally:
        reclaim_stale(instance)


def test_serve_refuses_tables_larger_than_the_machine(tmp_path):
    def edit(raw):
        raw["features"]["txn_count_1m"]["capacity"] = 4_294_967_295    # 256 B/key: 1 TiB
    p = _serve(tmp_path, edit)
    assert "cannot start: memory: need 1048" in p.stderr
    assert "feature tables 1048634 MiB" in p.stderr and "txn_count_1m 1048576 MiB" in p.stderr


def test_serve_refuses_an_idempotency_window_larger_than_the_machine(tmp_path):
    def edit(raw):
        raw["ingress"] = {**raw["ingress"], "dedup_max_bytes": 1 << 36}  # 64 GiB, faulted in
    p = _serve(tmp_path, edit)
    from ingress.dedup import IdempotencyWindow
    mib = IdempotencyWindow.memory_bytes(60 * 10**9, 262144, 1 << 36) >> 20     # ~64 GiB
    assert 65536 < mib < 65600
    assert "cannot start: memory:" in p.stderr and f"idempotency window {mib} MiB" in p.stderr
    assert "MemAvailable" in p.stderr and "dedup_max_bytes" in p.stderr


def test_created_tables_are_reserved(tmp_path):
    from shm.runtime.config import load_config
    from shm.featurestore import FeatureStore
    cfg = load_config(None)
    store = FeatureStore(cfg, os.getpid(), create=True)
    try:
        for seg in store.segments:
            assert os.stat("/dev/shm" + seg.name).st_blocks * 512 >= seg.size
    finally:
        store.close()
        store.unlink()
