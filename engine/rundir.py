"""The run directory of one engine instance: how the supervisor hands set-up to its children
and how `risk-engine status` / scripts/pin_workers.sh find a running engine.

    <root>/<instance>/
        supervisor.pid      pid of the supervisor (the instance is alive while it is)
        config.pickle       the validated Config (children never re-parse YAML)
        plan.json           owner pid, segment names, worker CPUs and NUMA nodes, eventfd
        gen-<g>.json        ruleset generation g: files, thresholds, on_error, label, rule ids
        status.json         pid, role, cpu, node of every engine process (rewritten on change)

<root> is $RISK_ENGINE_RUN_ROOT or /tmp/risk-engine.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

RUN_ROOT_ENV = "RISK_ENGINE_RUN_ROOT"


def run_root() -> Path:
    return Path(os.environ.get(RUN_ROOT_ENV, "/tmp/risk-engine"))


def run_dir_for(instance: str) -> Path:
    return run_root() / instance


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(run_dir, name: str, obj) -> None:
    _write_atomic(Path(run_dir) / name, json.dumps(obj, indent=1, sort_keys=True).encode())


def read_json(run_dir, name: str):
    return json.loads((Path(run_dir) / name).read_text())


def write_config(run_dir, cfg) -> None:
    _write_atomic(Path(run_dir) / "config.pickle", pickle.dumps(cfg))


def read_config(run_dir):
    return pickle.loads((Path(run_dir) / "config.pickle").read_bytes())


def read_plan(run_dir) -> dict:
    return read_json(run_dir, "plan.json")


def write_generation(run_dir, generation: int, spec: dict) -> None:
    write_json(run_dir, f"gen-{generation}.json", spec)


def read_generation(run_dir, generation: int) -> dict:
    return read_json(run_dir, f"gen-{generation}.json")


def attach_control(run_dir, cfg):
    """Attach the control block of the instance -> (Block, segment)."""
    from engine.control import Block
    from shm.segment import Segment
    plan = read_plan(run_dir)
    seg = Segment.attach(plan["control"])
    return Block(seg.buf, len(plan["workers"])), seg


def is_supervisor(pid: int) -> bool:
    """True if ``pid`` runs and is an engine supervisor: a pid file left by a killed engine
    may name a pid that the system has since given to an unrelated process."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return title.startswith(b"risk-engine: supervisor")


def live_instances() -> list[tuple[Path, int]]:
    """(run dir, supervisor pid) of every instance whose supervisor is alive."""
    out = []
    root = run_root()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        try:
            pid = int((d / "supervisor.pid").read_text())
        except (OSError, ValueError):
            continue
        if is_supervisor(pid):
            out.append((d, pid))
    return out
