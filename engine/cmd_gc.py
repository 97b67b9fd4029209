"""`risk-engine gc`: remove what retention lets go from a stopped instance's state directories.

A running engine applies retention itself (journal.max_files / max_age_s at each rotation,
snapshot.keep at each snapshot); a stopped one never shrinks, and a crash leaves temporary
files. This removes, never anything recovery needs (docs/DURABILITY.md, "Disk use and gc"):
- snapshot temporaries (``.snap-*.tmp``) and snapshots older than the newest ``snapshot.keep``
  that validate (a snapshot that fails validation is reported and kept, as evidence);
- journal segments wholly before the floor, the oldest kept snapshot's seq for that writer
  (record S itself is kept: recovery reads it), as journal.max_files / max_age_s allow, or
  all of them with ``--all-covered``; never the newest segment of a writer.
Refused while any journal writer lock is held or the instance's supervisor is alive.
"""
from __future__ import annotations

import os
import sys
import time

HELP = "remove old snapshots and journal segments that retention allows (stopped instance only)"


def add_arguments(p):
    p.add_argument("--config", help="config file (default: the bundled engine/default.yaml)")
    p.add_argument("--instance", help="instance name (overrides instance)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    p.add_argument("--all-covered", action="store_true",
                   help="remove every journal segment the oldest kept snapshot covers, beyond "
                        "journal.max_files / max_age_s (explain and replay then cannot reach "
                        "those events)")


class GcRefused(RuntimeError):
    """gc would touch a live instance's files."""


def _held_locks(jdir: str) -> tuple[list[int], list[str]]:
    """flock every w*.lock of the journal directory (as a writer does); the fds held, and the
    lock files another process holds (a live writer)."""
    import fcntl   # lazy: cli.py imports every command module, and only gc takes locks
    fds, busy = [], []
    for n in sorted(os.listdir(jdir)):
        if not (n.startswith("w") and n.endswith(".lock")):
            continue
        fd = os.open(os.path.join(jdir, n), os.O_RDWR | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fds.append(fd)
        except BlockingIOError:
            os.close(fd)
            busy.append(n)
    return fds, busy


def _snapshot_plan(sdir: str, keep: int) -> tuple[list[str], list[str], list[str]]:
    """(snapshots kept, files to remove, notes). Walks newest first: once ``keep`` snapshots
    validated, every older file goes; a newer one that fails validation stays, reported."""
    # lazy: numpy (cli.py imports every command module)
    from engine.snapshot import PREFIX, SnapshotCorruptError, SnapshotStore, load_snapshot
    store = SnapshotStore(sdir, keep=keep)
    kept, remove, notes = [], [], []
    valid = 0
    for p in store.paths():
        if valid >= keep:
            remove.append(p)
            continue
        try:
            load_snapshot(p)
            valid += 1
        except SnapshotCorruptError as e:
            notes.append(f"kept, fails validation (recovery skips it): {e}")
        kept.append(p)
    remove += [os.path.join(sdir, n) for n in os.listdir(sdir)
               if n.startswith("." + PREFIX) and n.endswith(".tmp")]
    return kept, remove, notes


def _journal_plan(cfg, kept: list[str], all_covered: bool) -> list[str]:
    """Segments wholly below each writer's floor (the oldest kept snapshot's S), oldest
    first, as retention allows; never the newest segment of a writer."""
    from engine.journal import list_segments, list_writers   # lazy: numpy (cli.py imports every command)
    from engine.snapshot import SnapshotCorruptError, load_snapshot_meta
    d = cfg.durability
    metas = []
    for p in kept:
        try:
            metas.append(load_snapshot_meta(p))
        except (SnapshotCorruptError, OSError, ValueError, KeyError):
            continue
    remove = []
    cutoff = time.time() - d.max_age_s
    for w in list_writers(d.journal_dir):
        floor = min((m.get(w, 0) for m in metas), default=0)   # 0: no snapshot holds w
        segs = list_segments(d.journal_dir, w)
        n_left = len(segs)
        for (first, path), (nxt, _) in zip(segs, segs[1:]):
            if nxt > floor:                       # this segment holds record S or later
                break
            too_many = d.max_files and n_left > d.max_files
            too_old = d.max_age_s and os.path.getmtime(path) < cutoff
            if not (all_covered or too_many or too_old):
                break
            remove.append(path)
            n_left -= 1
    return remove


def _du(*dirs: str) -> int:
    total = 0
    for d in dirs:
        for root, _, files in os.walk(d):
            for n in files:
                try:
                    total += os.lstat(os.path.join(root, n)).st_blocks * 512
                except OSError:
                    pass
    return total


def gc(cfg, dry_run: bool = False, all_covered: bool = False, log=print) -> list[str]:
    """Remove (or, ``dry_run``, list) what retention allows; returns the paths. Raises
    GcRefused while the instance runs."""
    from shm.runtime import rundir   # lazy: cli.py imports every command module
    d = cfg.durability
    live = [pid for p, pid in rundir.live_instances() if p.name == cfg.instance]
    if live and not dry_run:
        raise GcRefused(f"instance={cfg.instance!r} is running (supervisor pid={live[0]}); its "
                        f"own retention applies (journal.max_files, snapshot.keep); stop it first "
                        f"or use --dry-run")
    jdir = d.journal_dir if os.path.isdir(d.journal_dir) else None
    fds, busy = _held_locks(jdir) if jdir else ([], [])
    try:
        if busy and not dry_run:
            raise GcRefused(f"journal.dir={d.journal_dir}: {', '.join(busy)} held by a running "
                            f"writer; stop the engine that uses it first")
        kept, remove, notes = (_snapshot_plan(d.snapshot_dir, d.snapshot_keep)
                               if os.path.isdir(d.snapshot_dir) else ([], [], []))
        if jdir:
            remove += _journal_plan(cfg, kept, all_covered)
        for n in notes:
            log(f"risk-engine gc: {n}")
        before = _du(d.journal_dir, d.snapshot_dir)
        freed = 0
        for p in remove:
            size = os.lstat(p).st_blocks * 512
            if not dry_run:
                os.unlink(p)
            freed += size
            log(f"risk-engine gc: {'would remove' if dry_run else 'removed'} {p} ({size / 2**20:.1f} MiB)")
        log(f"risk-engine gc: {len(remove)} file(s), {freed / 2**20:.1f} MiB "
            f"{'would be ' if dry_run else ''}freed of {before / 2**20:.1f} MiB in "
            f"{d.journal_dir} and {d.snapshot_dir}")
        return remove
    finally:
        for fd in fds:
            os.close(fd)


def run(args) -> int:
    from shm.runtime.config import ConfigError, load_config   # lazy: yaml (cli.py imports every command)
    try:
        cfg = load_config(args.config, instance=args.instance or None)
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return 2
    if not cfg.durability.journal_enabled:
        print("risk-engine gc: journal.enabled is false: no journal or snapshots to collect")
        return 0
    try:
        gc(cfg, dry_run=args.dry_run, all_covered=args.all_covered)
    except GcRefused as e:
        print(f"risk-engine gc: refused: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"risk-engine gc: {e}", file=sys.stderr)
        return 1
    return 0
