"""The admin plane: a ZeroMQ ROUTER socket in the supervisor, JSON in and out.

Bound to ``admin.bind`` (default an ipc:// path per instance; an address reachable from
another machine is refused at config time unless admin.curve is on: shm.runtime.endpoints).
Requests are one frame ``{"cmd": NAME, ...}`` (a REQ client, or a DEALER with or without the
empty delimiter); replies ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code": CODE, "message": ...}}``.

Every request is validated completely (engine.admin_request: size, UTF-8, nesting, then the
command's argument schema, then the command's own checks against the engine) before anything
is applied or logged. No request can end the admin loop: any failure is an error reply, an
unexpected exception is ``INTERNAL`` and counted. A reload is answered when its outcome is
known; meanwhile the supervisor's loop and other admin requests keep being served.
"""
from __future__ import annotations

import json
import os

import zmq

from engine import admin_state
from engine.admin_client import request
from engine.cluster.node_hooks import admin_commands
from engine.admin_request import (MAX_FILES, MAX_MESSAGE_CHARS, MAX_REQUEST_BYTES, NO_ARGS, PATH,
                                  AdminError, allowed_file, boolean, check_args, integer, list_of,
                                  parse_request)
from engine.explain_job import MAX_JOBS, ExplainJob
from engine.explain_replay import parse_request_key
from engine.exporter import stats
from engine.reload import reload_reply
from engine.snapshot_coordinator import SnapshotError
from engine.status_file import processes
from shm.runtime.endpoints import parse_zmq_bind

MAX_FRAMES = 3                   # identity, delimiter, body: anything longer is refused
MAX_REQUESTS_PER_POLL = 64       # then the supervisor's loop runs again

__all__ = ["AdminError", "AdminServer", "request"]


def _status(sup, args):
    rulesets = sup.rulesets
    return {"processes": processes(sup), "generation": rulesets.generation,
            "ruleset": rulesets.specs[rulesets.generation]["label"],
            "reloading": rulesets.job is not None}


def _stats(sup, args):
    return {"stats": stats(sup.collector)}


def rule_roots(sup) -> list[str]:
    """Reload may name files in the directories of the configured rule files."""
    return sorted({os.path.dirname(os.path.realpath(f)) for f in sup.cfg.rules.files})


def _reload(sup, args):
    files, previous = args.get("files"), args.get("previous", False)
    if files is not None and previous:
        raise AdminError("BAD_ARGUMENT", "give files or previous, not both")
    if files is not None:
        if not files:
            raise AdminError("BAD_ARGUMENT", "files: at least one path")
        roots = rule_roots(sup)
        files = tuple(allowed_file(f, roots, f"files[{i}]") for i, f in enumerate(files))
    cluster = getattr(sup, "cluster", None)      # a cluster node reloads every node (engine.cluster.ruleset_apply)
    reload = cluster.ruleset.reload if cluster is not None and cluster.ruleset is not None else sup.rulesets.reload
    return _Deferred(lambda done: reload(files, previous=previous, on_done=done))


def _snapshot(sup, args):
    try:
        return {"path": sup.snapshot()}
    except (SnapshotError, OSError) as e:
        raise AdminError("SNAPSHOT_FAILED", str(e)) from None


def _explain(sup, args):
    """Explain a journaled event in a child process (engine.explain_job): the workers go on."""
    if not sup.cfg.durability.journal_enabled:
        raise AdminError("NO_JOURNAL", "the journal is off (journal.enabled: false): nothing to explain")
    if ("seq" in args) == ("request" in args):
        raise AdminError("BAD_ARGUMENT", "give seq=N [writer=W] or request=CLIENT_ID:REQUEST_ID")
    if "request" in args and "writer" in args:
        raise AdminError("BAD_ARGUMENT", "writer goes with seq; request finds its events' writers")
    if len(sup.admin.jobs) >= MAX_JOBS:
        raise AdminError("EXPLAIN_BUSY", f"{MAX_JOBS} explains are running; try again when one is answered")
    return _Job(ExplainJob(sup.run_dir, args.get("seq"), args.get("writer"), sup.started_ns,
                           request=args.get("request")))


def _request_key(key, v):
    """CLIENT_ID:REQUEST_ID, checked whole here (the explain child gets it as parsed ints)."""
    if not isinstance(v, str):
        raise AdminError("BAD_ARGUMENT", f"{key}: must be a string CLIENT_ID:REQUEST_ID, got {type(v).__name__}")
    try:
        return parse_request_key(v)
    except ValueError as e:
        raise AdminError("BAD_ARGUMENT", str(e)) from None


COMMANDS = {"status": (_status, NO_ARGS), "stats": (_stats, NO_ARGS),
            "reload": (_reload, {"files": (list_of(PATH, MAX_FILES), False),
                                 "previous": (boolean, False)}),
            "snapshot": (_snapshot, NO_ARGS),
            "explain": (_explain, {"seq": (integer(1, 2**64 - 1), False),
                                   "writer": (integer(0, 999), False),
                                   "request": (_request_key, False)})}


def _commands(sup) -> dict:
    """A cluster node's state changes go through the control bucket (engine.cluster.node)."""
    cluster = admin_commands(sup) if getattr(sup, "cluster", None) is not None else {}
    return {**COMMANDS, **admin_state.COMMANDS, **cluster}


class _Deferred:
    """A command whose reply comes later: ``start(done)`` returns a refusal now or None and
    calls ``done(outcome)`` once (reload)."""

    def __init__(self, start):
        self.start = start


class _Job:
    """A command answered by a child process: ``job.poll()`` gives None, then the reply."""

    def __init__(self, job):
        self.job = job


def _error(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message[:MAX_MESSAGE_CHARS]}}


class AdminServer:
    def __init__(self, sup):
        self.sup = sup
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        bind = sup.cfg.admin.bind
        ep = parse_zmq_bind(bind, "admin.bind")
        if ":" in ep.host:
            self.sock.setsockopt(zmq.IPV6, 1)
        if sup.cfg.admin.curve.enabled:
            from ingress.security import configure_server   # lazy: asyncio, ssl; only with admin.curve
            configure_server(self.ctx, self.sock, sup.cfg.admin.curve)
        self.sock.bind(bind)
        if ep.transport == "ipc":       # connecting needs write access: root and our user only
            os.chmod(ep.path, 0o600)
        self.bind = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode() if ep.transport == "tcp" else bind
        self.refused = 0                # error replies (risk_admin_refused_total)
        self.internal = 0               # unexpected exceptions (risk_admin_internal_errors_total)
        self.jobs: list = []            # (envelope, job) of explains in flight (engine.explain_job)

    def poll(self, timeout_ms: int) -> None:
        """Answer finished jobs, then wait up to ``timeout_ms`` for requests and answer what
        is queued (bounded)."""
        self._poll_jobs()
        if not self.sock.poll(timeout_ms):
            return
        for _ in range(MAX_REQUESTS_PER_POLL):
            frames = self._recv()
            if frames is None:
                return
            self._serve(frames)

    def _recv(self) -> list | None:
        """One message's first MAX_FRAMES + 1 frames (the rest are drained, not kept)."""
        try:
            frames = [self.sock.recv(zmq.NOBLOCK)]
        except zmq.Again:
            return None
        while self.sock.getsockopt(zmq.RCVMORE):
            f = self.sock.recv()
            if len(frames) <= MAX_FRAMES:
                frames.append(f)
        return frames

    def _serve(self, frames: list) -> None:
        envelope, body = frames[:1], frames[1:]
        if body and body[0] == b"":           # a REQ client's delimiter
            envelope, body = frames[:2], frames[2:]
        if len(body) != 1:
            self._send(envelope, _error("BAD_REQUEST", f"expected one frame, got {len(body)}"
                                        f"{' or more' if len(frames) > MAX_FRAMES else ''}"))
            return
        rep = self.handle(body[0])
        if isinstance(rep, _Job):
            self.jobs.append((envelope, rep.job))
        elif isinstance(rep, _Deferred):
            self._start_deferred(envelope, rep)
        else:
            self._send(envelope, rep)

    def _start_deferred(self, envelope: list, d: _Deferred) -> None:
        def done(outcome: str) -> None:
            rep = reload_reply(self.sup.rulesets, outcome)
            if not rep["ok"]:
                rep = _error(rep["error"]["code"], rep["error"]["message"])   # cut to size
            self._send(envelope, rep)
        try:
            refused = d.start(done)
        except Exception as e:                 # noqa: BLE001 - the loop must survive it
            self._send(envelope, self._internal(e))
            return
        if refused:
            done(refused)

    def _poll_jobs(self) -> None:
        for item in list(self.jobs):
            envelope, job = item
            try:
                rep = job.poll()
            except Exception as e:             # noqa: BLE001 - the loop must survive it
                job.kill()
                rep = self._internal(e)
            if rep is not None:
                self.jobs.remove(item)
                self._send(envelope, rep if rep.get("ok") else
                           _error(rep["error"]["code"], str(rep["error"]["message"])))

    def _send(self, envelope: list, rep: dict) -> None:
        if not rep.get("ok"):
            self.refused += 1
        try:
            self.sock.send_multipart([*envelope, json.dumps(rep).encode()], zmq.NOBLOCK)
        except zmq.ZMQError:                   # the peer is gone or not reading: drop it
            pass

    def _internal(self, e: BaseException) -> dict:
        self.internal += 1
        self.sup.log(f"risk-engine: admin: internal error {type(e).__name__}: {str(e)[:200]}")
        return _error("INTERNAL", f"{type(e).__name__} (logged)")

    def handle(self, raw: bytes):
        """One request frame -> reply dict (or a _Deferred). Never raises."""
        try:
            req = parse_request(raw)
            commands = _commands(self.sup)
            entry = commands.get(req["cmd"])
            if entry is None:
                raise AdminError("UNKNOWN_COMMAND", f"cmd={req['cmd'][:64]!r}; known: "
                                                    f"{', '.join(sorted(commands))}")
            fn, schema = entry
            rep = fn(self.sup, {"cmd": req["cmd"], **check_args(req, schema)})
            return rep if isinstance(rep, (_Deferred, _Job)) else {"ok": True, **rep}
        except AdminError as e:
            return _error(e.code, str(e))
        except Exception as e:                 # noqa: BLE001 - the loop must survive any request
            return self._internal(e)

    def close(self) -> None:
        for _, job in self.jobs:
            job.kill()
        self.jobs = []
        self.sock.close(0)
        if self.sup.cfg.admin.curve.enabled:
            from ingress.security import stop_authenticator   # lazy: asyncio, ssl; only with admin.curve
            stop_authenticator(self.ctx)
