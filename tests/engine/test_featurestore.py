"""Feature tables that the machine cannot hold are refused at start with a clear error,
before any segment exists; tables that fit are reserved page by page at creation."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

from engine.config import portable_raw
from shm.segment import list_names, reclaim_stale


def test_serve_refuses_tables_larger_than_the_machine(tmp_path):
    raw = portable_raw(None)
    raw["features"]["txn_count_1m"]["capacity"] = 4_294_967_295      # 256 B/key: 1 TiB
    raw["journal"] = {**raw["journal"], "dir": str(tmp_path / "j")}
    raw["snapshot"] = {**raw["snapshot"], "dir": str(tmp_path / "s")}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(raw))
    instance = f"huge{os.getpid() % 100000}"
    try:
        p = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", str(path),
                            "--instance", instance, "--metrics", "off", "--bind", "tcp://127.0.0.1:0"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        assert "cannot start: feature tables: need 1048" in p.stderr
        assert "txn_count_1m 1048576 MiB" in p.stderr and "capacity" in p.stderr
        assert not list_names(instance)
    finally:
        reclaim_stale(instance)


def test_created_tables_are_reserved(tmp_path):
    from engine.config import load_config
    from engine.featurestore import FeatureStore
    cfg = load_config(None)
    store = FeatureStore(cfg, os.getpid(), create=True)
    try:
        for seg in store.segments:
            assert os.stat("/dev/shm" + seg.name).st_blocks * 512 >= seg.size
    finally:
        store.close()
        store.unlink()
