"""The run directory of one engine instance: how the supervisor hands set-up to its children
and how `risk-engine status` / scripts/pin_workers.sh find a running engine.

    <root>/<instance>/          0700, owned by the engine's uid (shm.runtime.securedir)
        supervisor.pid      pid of the supervisor (the instance is alive while it is)
        config.json         the validated config as plain data; each child validates it again
        plan.json           owner pid, segment names, worker CPUs and NUMA nodes, eventfd
        gen-<g>.json        ruleset generation g: files, their sha256, thresholds, on_error,
                            label, rule ids, kernel cache key (source_hash)
        rules-<sha256>.yaml the bytes of a rule file as the supervisor compiled them, written
                            before a generation naming it is published; workers compile these,
                            never the operator's file, which may have been edited since
        status.json         generation, ruleset, pid, role, cpu, node of every engine process
                            (rewritten on change: engine.status_file)
        reload-<id>.request / reload-<id>.result   `risk-engine reload` and its answer

Every file is written 0600 and read back only if the engine's uid (or root) owns it: nothing
here is code, and nothing here is taken from a place another user can write.

<root> is $RISK_ENGINE_RUN_ROOT if set, else $XDG_RUNTIME_DIR/risk-engine if that variable is
set, else /run/risk-engine (systemd's RuntimeDirectory=risk-engine). Commands that look for a
running engine (status, admin, reload) search $RISK_ENGINE_RUN_ROOT only if it is set, else both
of the others, so an operator with a login session still finds an engine started by systemd.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from shm.runtime.securedir import UnsafePathError, ensure_private_dir, read_private_file, write_private_file

from shm.runtime.runroot import RUN_ROOT_ENV, SYSTEM_RUN_ROOT, run_dir_for, run_root, search_roots  # noqa: F401


def make_run_dir(instance: str) -> Path:
    """Create (or check) <root> and <root>/<instance>: 0700, ours, writable by no one else.
    Raises securedir.UnsafePathError naming the path, owner and mode."""
    try:
        ensure_private_dir(run_root(), "run directory root")
    except PermissionError as e:
        if isinstance(e, UnsafePathError):
            raise
        raise PermissionError(f"{e} (set ${RUN_ROOT_ENV} or $XDG_RUNTIME_DIR to a directory of "
                              f"yours, or run under systemd with RuntimeDirectory=risk-engine)") from None
    return ensure_private_dir(run_dir_for(instance), "run directory")


def write_json(run_dir, name: str, obj) -> None:
    """0600; when root writes into the run dir of an engine running as another user
    (`risk-engine reload` by an operator), the file is handed to that user so it can read it."""
    path = Path(run_dir) / name
    write_private_file(path, json.dumps(obj, indent=1, sort_keys=True).encode())
    if os.geteuid() == 0:
        owner = os.stat(run_dir).st_uid
        if owner != 0:
            os.chown(path, owner, -1, follow_symlinks=False)


def read_json(run_dir, name: str):
    return json.loads(read_private_file(Path(run_dir) / name))


def write_config(run_dir, cfg) -> None:
    """The validated config as JSON data (shm.runtime.config.config_to_raw). Refuses a config that
    would not come back identical in the children (a value JSON cannot carry)."""
    # lazy: config loads numpy and yaml; `risk-engine status` reads the run dir without them
    from shm.runtime.config import ConfigError, config_to_raw, parse_config
    doc = {"path": cfg.path, "raw": config_to_raw(cfg)}
    try:
        text = json.dumps(doc, allow_nan=False)      # key order matters: schema fields
        back = parse_config(json.loads(text)["raw"], cfg.path)
    except (TypeError, ValueError) as e:
        raise ConfigError("", f"the config cannot be handed to the engine's processes as "
                              f"JSON data: {e}") from None
    if back != cfg:
        diff = [k for k in ("ingress", "metrics", "admin", "workers", "rings", "schema", "rules",
                            "durability", "features", "lists", "state", "instance")
                if getattr(back, k) != getattr(cfg, k)]
        raise ConfigError(",".join(diff), "differs after the hand-off to the engine's processes "
                                          "as JSON data (a value JSON cannot carry?)")
    write_private_file(Path(run_dir) / "config.json", text.encode())


def read_config(run_dir):
    """The supervisor's config, validated again here (shm.runtime.config.parse_config)."""
    from shm.runtime.config import parse_config   # lazy: numpy and yaml (write_config)
    doc = read_json(run_dir, "config.json")
    return parse_config(doc["raw"], doc["path"])


def read_plan(run_dir) -> dict:
    return read_json(run_dir, "plan.json")


def write_generation(run_dir, generation: int, spec: dict) -> None:
    write_json(run_dir, f"gen-{generation}.json", spec)


def read_generation(run_dir, generation: int) -> dict:
    return read_json(run_dir, f"gen-{generation}.json")


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def write_rules_copy(run_dir, data: bytes) -> str:
    """Keep ``data`` (a rule file's bytes) as rules-<sha256>.yaml, 0600, atomically; its sha256."""
    sha256 = hashlib.sha256(data).hexdigest()
    write_private_file(Path(run_dir) / f"rules-{sha256}.yaml", data)
    return sha256


def read_rules_copy(run_dir, sha256: str) -> bytes:
    """The bytes kept by write_rules_copy. Raises ValueError if ``sha256`` is not one or the
    bytes no longer hash to it, OSError if the copy cannot be read."""
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"sha256={str(sha256)[:80]!r}: not a sha256 hex digest")
    path = Path(run_dir) / f"rules-{sha256}.yaml"
    data = read_private_file(path)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: its bytes do not hash to {sha256} (damaged)")
    return data


def attach_control(run_dir, cfg):
    """Attach the control block of the instance -> (Block, segment)."""
    from shm.control import Block       # lazy: numba and numpy (write_config says why)
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


def remove_dead_run_dir(instance: str) -> bool:
    """Remove the run directory an engine killed with SIGKILL left (its pid file names no
    live supervisor), as shm.segment.reclaim_stale removes its segments. True if removed."""
    d = run_dir_for(instance)
    try:
        pid = int((d / "supervisor.pid").read_text())
    except (OSError, ValueError):
        pid = 0
    if not d.is_dir() or (pid and is_supervisor(pid)):
        return False
    for f in d.iterdir():
        if f.is_dir() and not f.is_symlink():     # a cluster node's fetched rule files
            shutil.rmtree(f)
        else:
            f.unlink()
    d.rmdir()
    return True


def live_instances() -> list[tuple[Path, int]]:
    """(run dir, supervisor pid) of every instance whose supervisor is alive."""
    out = []
    for root in search_roots():
        try:
            dirs = sorted(root.iterdir())
        except OSError:
            continue
        for d in dirs:
            try:
                pid = int(read_private_file(d / "supervisor.pid"))
            except (OSError, ValueError):
                continue
            if is_supervisor(pid):
                out.append((d, pid))
    return out
