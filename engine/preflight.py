"""What the supervisor checks before it creates anything: the ports it will listen on are
free, the instance is not running already (and what a dead one left is reclaimed), the state
directories are private, and an upgrade does not start from empty feature state. Each refusal
is a StartupError.
"""
from __future__ import annotations

import errno
import os
import socket

from engine.journal import list_writers
from shm.runtime import rundir
from shm.runtime.endpoints import parse_host_port, parse_zmq_bind
from shm.runtime.securedir import UnsafePathError, check_private_files, ensure_private_dir
from shm.segment import reclaim_stale


class StartupError(RuntimeError):
    """The engine cannot start; the message says why (exit code 2)."""


def check_ports(cfg) -> None:
    """Bind the TCP ports of ingress.bind and metrics.bind (when enabled) for a moment, all
    at once, before anything is created: a busy port used to be found by the ingress after
    the workers had made their journals (17 MB left behind by a start that failed). ipc://
    paths live in the run directory, which claim_instance guards."""
    eps = [("ingress.bind", cfg.ingress.bind, parse_zmq_bind(cfg.ingress.bind, "ingress.bind"))]
    if cfg.metrics.enabled:
        eps.append(("metrics.bind", cfg.metrics.bind, parse_host_port(cfg.metrics.bind, "metrics.bind")))
    held = []
    try:
        for key, text, ep in eps:
            if ep.transport not in ("tcp", "http") or ep.port is None or ep.kind == "interface":
                continue                # an ephemeral port, or an address only libzmq resolves
            for addr in ep.addresses or ("0.0.0.0",):
                s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
                held.append(s)
                # as libzmq and http.server bind: a socket in TIME_WAIT does not count as busy
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((addr, ep.port))
                except OSError as e:
                    why = ("in use (another process, or another instance, listens there; "
                           "`risk-engine status` lists this user's instances)"
                           if e.errno == errno.EADDRINUSE else e.strerror)
                    raise StartupError(f"{key}={text!r}: {addr} port {ep.port} {why}; "
                                       f"nothing was created") from None
    finally:
        for s in held:
            s.close()


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


def _missing_dirs(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out, p = [], os.path.abspath(path)
    while not os.path.lexists(p) and p != os.path.dirname(p):
        out.append(p)
        p = os.path.dirname(p)
    return out


def remove_created_dirs(created: list[str]) -> None:
    """After a start that failed: remove the directories check_state_dirs made, if they are
    still empty (os.rmdir never removes a file)."""
    for p in sorted(set(created), key=len, reverse=True):
        try:
            os.rmdir(p)
        except OSError:
            pass


def check_state_dirs(cfg, log, created: list[str] | None = None) -> None:
    """The journal and snapshot directories: created 0700, or refused when another user
    owns them or can write them (shm.runtime.securedir); state files narrowed to 0600.
    ``created`` gets the directories made here (remove_created_dirs after a failed start)."""
    d = cfg.durability
    if not d.journal_enabled:
        return
    try:
        for key, path in (("journal.dir", d.journal_dir), ("snapshot.dir", d.snapshot_dir)):
            if created is not None:
                created += _missing_dirs(path)
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
