"""What the supervisor checks before it creates anything: the instance is not running
already (and what a dead one left is reclaimed), the state directories are private, and an
upgrade does not start from empty feature state. Each refusal is a StartupError.
"""
from __future__ import annotations

import os

from engine.journal import list_writers
from shm.runtime import rundir
from shm.runtime.securedir import UnsafePathError, check_private_files, ensure_private_dir
from shm.segment import reclaim_stale


class StartupError(RuntimeError):
    """The engine cannot start; the message says why (exit code 2)."""


def claim_instance(cfg, pid: int, log) -> None:
    """Refuse when a live supervisor other than ``pid`` runs this instance; remove the
    shared-memory segments a dead one left."""
    for d, other in rundir.live_instances():
        if d.name == cfg.instance and other != pid:
            raise StartupError(f"instance={cfg.instance!r} is already running (supervisor pid={other}); "
                               f"stop it or set a different `instance` in the config")
    removed = reclaim_stale(cfg.instance)
    if removed:
        log(f"risk-engine: reclaimed {len(removed)} stale shared-memory segment(s) of "
            f"instance {cfg.instance}")


def check_state_dirs(cfg, log) -> None:
    """The journal and snapshot directories: created 0700, or refused when another user
    owns them or can write them (shm.runtime.securedir); state files narrowed to 0600."""
    d = cfg.durability
    if not d.journal_enabled:
        return
    try:
        for key, path in (("journal.dir", d.journal_dir), ("snapshot.dir", d.snapshot_dir)):
            path = ensure_private_dir(path, key)
            narrowed = check_private_files(path, key)
            if narrowed:
                log(f"risk-engine: {key}={path}: {narrowed} file(s) readable by "
                    f"others narrowed to mode 0600")
    except UnsafePathError as e:
        raise StartupError(f"unsafe directory: {e}") from None
    refuse_legacy_state(cfg)


def refuse_legacy_state(cfg) -> None:
    """Journal and snapshots defaulted to /var/tmp/risk-engine/{instance} before they
    moved to {state} (shm.runtime.config.state_root): an empty journal dir while the old one
    holds this user's journal means an upgrade, not a first start. Refuse rather than
    start from empty feature state."""
    jdir = cfg.durability.journal_dir
    old = f"/var/tmp/risk-engine/{cfg.instance}"
    if os.path.realpath(jdir).startswith(old + "/") or list_writers(jdir):
        return
    try:
        mine = os.lstat(old).st_uid == os.geteuid() and list_writers(f"{old}/journal")
    except OSError:
        return
    if mine:
        raise StartupError(f"journal.dir={jdir} is empty but {old}/journal (the default before "
                           f"this version) holds this engine's journal: move {old}/journal and "
                           f"{old}/snapshots there, or set journal.dir and snapshot.dir to them")
