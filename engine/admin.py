"""The admin plane: a ZeroMQ REP socket in the supervisor, JSON in and out.

Bound to ``admin.bind`` (default an ipc:// path per instance; a TCP address other than
loopback is refused at config time unless admin.curve is on). Requests are
``{"cmd": NAME, ...}``; replies ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code": CODE, "message": ...}}``. Commands are registered in
``COMMANDS``; each takes the supervisor and the request and returns a dict.
"""
from __future__ import annotations

import json

import zmq

MAX_REQUEST_BYTES = 1 << 20


class AdminError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _status(sup, req):
    return {"processes": sup.status(), "generation": sup.generation,
            "ruleset": sup.generations[sup.generation]["label"]}


def _stats(sup, req):
    from engine.exporter import stats
    return {"stats": stats(sup.collector)}


def _reload(sup, req):
    files = req.get("files")
    if files is not None and (not isinstance(files, list) or not all(isinstance(f, str) for f in files)):
        raise AdminError("BAD_ARGUMENT", "files: must be a list of paths")
    outcome = sup.reload(tuple(files) if files else None, previous=bool(req.get("previous")))
    if outcome.startswith("reload refused"):
        raise AdminError("RULESET_REFUSED", outcome)
    return {"outcome": outcome, "generation": sup.generation}


def _snapshot(sup, req):
    from engine.supervisor import StartupError
    try:
        return {"path": sup.snapshot()}
    except (StartupError, OSError) as e:
        raise AdminError("SNAPSHOT_FAILED", str(e)) from None


COMMANDS = {"status": _status, "stats": _stats, "reload": _reload, "snapshot": _snapshot}


def _commands() -> dict:
    from engine import admin_state
    return {**COMMANDS, **admin_state.COMMANDS}


def admin_bind(cfg) -> str:
    return cfg.admin.bind.replace("{instance}", cfg.instance)


class AdminServer:
    def __init__(self, sup):
        self.sup = sup
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if sup.cfg.admin.curve.enabled:
            from ingress.security import configure_server
            configure_server(self.ctx, self.sock, sup.cfg.admin.curve)
        self.bind = admin_bind(sup.cfg)
        self.sock.bind(self.bind)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for one request and answer it."""
        if not self.sock.poll(timeout_ms):
            return
        raw = self.sock.recv()
        self.sock.send(json.dumps(self.handle(raw)).encode())

    def handle(self, raw: bytes) -> dict:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise AdminError("BAD_REQUEST", 'expected a JSON object with "cmd"')
            commands = _commands()
            fn = commands.get(req["cmd"])
            if fn is None:
                raise AdminError("UNKNOWN_COMMAND", f"cmd={req['cmd']!r}; known: {', '.join(sorted(commands))}")
            return {"ok": True, **fn(self.sup, req)}
        except AdminError as e:
            return {"ok": False, "error": {"code": e.code, "message": str(e)}}
        except ValueError as e:
            return {"ok": False, "error": {"code": "BAD_REQUEST", "message": f"invalid JSON: {e}"}}

    def close(self) -> None:
        self.sock.close(0)
        if self.sup.cfg.admin.curve.enabled:
            from ingress.security import stop_authenticator
            stop_authenticator(self.ctx)


def request(bind: str, req: dict, timeout_ms: int = 60_000, curve_client=None) -> dict:
    """Client side: one request, one reply; raises TimeoutError after ``timeout_ms``."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    if curve_client:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = curve_client
    try:
        s.connect(bind)
        s.send(json.dumps(req).encode())
        if not s.poll(timeout_ms):
            raise TimeoutError(f"admin {bind}: no reply within {timeout_ms} ms")
        return json.loads(s.recv())
    finally:
        s.close(0)
