"""Where an instance's run directory is (shm.runtime.rundir describes what is in it): the
config names its admin socket by it, so this stays below both."""
from __future__ import annotations

import os
from pathlib import Path

RUN_ROOT_ENV = "RISK_ENGINE_RUN_ROOT"
SYSTEM_RUN_ROOT = "/run/risk-engine"


def run_root() -> Path:
    """Where this process would create its instance's run directory."""
    if os.environ.get(RUN_ROOT_ENV):
        return Path(os.environ[RUN_ROOT_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "risk-engine"
    return Path(SYSTEM_RUN_ROOT)


def search_roots() -> list[Path]:
    """Where a running engine may have its run directory (see the module doc)."""
    if os.environ.get(RUN_ROOT_ENV):
        return [Path(os.environ[RUN_ROOT_ENV])]
    return list(dict.fromkeys([run_root(), Path(SYSTEM_RUN_ROOT)]))


def run_dir_for(instance: str) -> Path:
    return run_root() / instance
