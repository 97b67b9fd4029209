"""Admin-plane commands that change risk state: lists, account state, global halt.

Each change is applied to the shared-memory tables with an atomic publish (a list swaps its
double buffer; a state slot and the halt cell are release stores), so the next batch of every
worker sees all of it or none of it. Each change is appended to ``admin.log`` (JSON lines,
fsynced) in the journal directory before the reply, so an operator's action is durable and
auditable; recovery replays it after the snapshot that precedes it. Its records are numbered
and checksummed (engine.admin_log): recovery refuses a damaged or out-of-sequence one.
"""
from __future__ import annotations

import time

import numpy as np

from engine.admin import AdminError

STATE_CODES = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}


def _fs(sup):
    if sup.features is None:
        raise AdminError("NO_FEATURES", "this engine has no feature store")
    return sup.features.fs


def _list_spec(sup, name):
    spec = next((l for l in sup.features.specs.lists if l.name == name), None)
    if spec is None:
        names = ", ".join(l.name for l in sup.features.specs.lists) or "none"
        raise AdminError("UNKNOWN_LIST", f"list={name!r}; lists: {names}")
    return spec


def log_change(sup, entry: dict) -> None:
    """Append ``entry`` to admin.log (numbered, checksummed, fsynced: engine.admin_log)."""
    from engine.admin_log import AdminLog, AdminLogCorrupt
    path = sup.admin_log_path()
    if path is None:
        return
    log = sup.admin_log
    try:
        if log is None or log.path != path:
            log = sup.admin_log = AdminLog(path)
            if log.torn is not None:
                sup.log(f"risk-engine: admin log {path}: cut off an unfinished record of "
                        f"{log.torn.nbytes} bytes at offset={log.torn.offset} (never acknowledged)")
        log.append(time.time_ns(), entry)
    except AdminLogCorrupt as e:
        raise AdminError("ADMIN_LOG_CORRUPT", str(e)) from None


def _values(spec, req) -> np.ndarray:
    from engine.features.lists import ListError, load_list_file, parse_list_text
    try:
        if "file" in req:
            return load_list_file(str(req["file"]), spec.type)
        vals = req.get("values")
        if not isinstance(vals, list):
            raise AdminError("BAD_ARGUMENT", "values: a JSON list of values (or file=PATH)")
        return parse_list_text("\n".join(str(v) for v in vals), spec.type, "<admin>")
    except ListError as e:
        raise AdminError("BAD_LIST", str(e)) from None


def list_cmd(sup, req):
    from engine.features.lists import list_values
    fs = _fs(sup)
    name = req.get("name")
    spec = _list_spec(sup, name)
    op = req["cmd"].split("-", 1)[1]
    arr = fs.array(f"fl_{name}")
    current = list_values(arr)
    if op == "show":
        return {"name": name, "count": int(len(current)), "values": [int(v) for v in current[:10000]]}
    vals = _values(spec, req)
    if op == "add":
        new = np.union1d(current, vals)
    elif op == "remove":
        new = np.setdiff1d(current, vals)
    else:
        new = np.unique(vals)
    if len(new) > spec.capacity:
        raise AdminError("LIST_FULL", f"list={name!r}: {len(new)} values over capacity={spec.capacity}")
    log_change(sup, {"cmd": f"list-{op}", "name": name, "values": [int(v) for v in vals]})
    fs.replace_list(name, new.astype(np.uint64))
    return {"name": name, "count": int(len(new))}


def set_state(sup, req):
    fs = _fs(sup)
    name, key, state = req.get("name"), req.get("key"), req.get("state")
    if name not in {s.name for s in sup.features.specs.states}:
        raise AdminError("UNKNOWN_STATE", f"state={name!r}")
    if state not in STATE_CODES:
        raise AdminError("BAD_ARGUMENT", f"state={state!r}: one of {', '.join(STATE_CODES)}")
    log_change(sup, {"cmd": "set-state", "name": name, "key": key, "state": state})
    try:
        fs.set_state(name, key, STATE_CODES[state])
    except ValueError as e:
        raise AdminError("BAD_ARGUMENT", str(e)) from None
    return {"name": name, "key": key, "state": state}


def halt(sup, req):
    on = req["cmd"] == "halt"
    log_change(sup, {"cmd": req["cmd"]})
    _fs(sup).set_halt(on)
    return {"global_halt": on}


def features(sup, req):
    fs = _fs(sup)
    return {"counters": fs.counters(), "memory": fs.memory_report()}


COMMANDS = {"list-show": list_cmd, "list-add": list_cmd, "list-remove": list_cmd,
            "list-replace": list_cmd, "set-state": set_state, "halt": halt, "resume": halt,
            "features": features}
