"""Admin-plane commands that change risk state: lists, account state, global halt.

Each change is applied to the shared-memory tables with an atomic publish (a list swaps its
double buffer; a state slot and the halt cell are release stores), so the next batch of every
worker sees all of it or none of it. Each change is appended to ``admin.log`` (JSON lines,
fsynced) in the journal directory before the reply, so an operator's action is durable and
auditable; recovery replays it after the snapshot that precedes it. Its records are numbered
and checksummed (engine.admin_log): recovery refuses a damaged or out-of-sequence one.
"""
from __future__ import annotations

import os
import time

import numpy as np

from shm.features.state import STATE_NAMES, _read_state
from shm.ipv4 import format_cidr4, format_ipv4
from engine.autoblock import AUTO_LIST, auto_show, lift
from shm.ipv6 import format_cidr6, format_peer, peer_key
from engine.admin_request import (NAME, NO_ARGS, PATH, AdminError, allowed_file, int_or_string,
                                  list_of, one_of)
from engine.admin_log import AdminLog, AdminLogCorrupt
from shm.features.keys import key_from_python
from shm.features.lists import ListError, as_values, list_values, load_list_file, parse_value
from shm.runtime.textfile import excerpt



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
        # mono_ns: the clock of the journal's arrival_ns (the ingress stamps CLOCK_MONOTONIC),
        # so explain can tell which events a change preceded (docs/EXPLAIN.md)
        log.append(time.time_ns(), {**entry, "mono_ns": time.monotonic_ns()})
    except AdminLogCorrupt as e:
        raise AdminError("ADMIN_LOG_CORRUPT", str(e)) from None


MAX_ADMIN_VALUES = 1 << 20         # values in one list request (the 1 MiB frame bounds it too)


def _values(sup, spec, args) -> np.ndarray:
    """The request's values (or file) parsed into the list's encoding (u64; an object array of
    ints for cidr6); nothing applied."""
    if ("file" in args) == ("values" in args):
        raise AdminError("BAD_ARGUMENT", "give values (a JSON list) or file (a path), one of them")
    if "file" in args:
        roots = sorted({os.path.dirname(os.path.realpath(l.file)) for l in sup.features.specs.lists if l.file})
        path = allowed_file(args["file"], roots, "file")
        try:
            return load_list_file(path, spec.type)
        except ListError as e:
            raise AdminError("BAD_LIST", str(e)) from None
    out = [0] * len(args["values"])
    for i, v in enumerate(args["values"]):
        try:
            if spec.type == "ipv4" and isinstance(v, int):    # a JSON integer, as in events
                if not 0 <= v <= 0xFFFFFFFF:
                    raise ValueError(f"{v} out of range for ipv4 [0, 4294967295]")
                out[i] = v
            else:
                out[i] = parse_value(str(v) if isinstance(v, int) else v, spec.type)
        except (ValueError, OverflowError) as e:
            raise AdminError("BAD_LIST", f"values[{i}]: {excerpt(str(e), 80)}") from None
    return as_values(sup.features.fs.array(f"fl_{spec.name}"), out)


def list_cmd(sup, args):
    fs = _fs(sup)
    name = args["name"]
    if name == AUTO_LIST and args["cmd"] == "list-show":     # sources blocked by rules, expiring
        return auto_show(sup.enforcement)
    spec = _list_spec(sup, name)
    op = args["cmd"].split("-", 1)[1]
    arr = fs.array(f"fl_{name}")
    current = list_values(arr)
    if op == "show":
        if "values" in args or "file" in args:
            raise AdminError("BAD_ARGUMENT", "list-show takes only name")
        shown = current[:10000].tolist()
        fmt = {"ipv4": format_ipv4, "cidr4": format_cidr4, "cidr6": format_cidr6}.get(spec.type)
        if fmt is not None:
            shown = [fmt(v) for v in shown]
        return {"name": name, "count": int(len(current)), "values": shown}
    vals = _values(sup, spec, args)
    if op == "add":
        new = np.union1d(current, vals)
    elif op == "remove":
        new = np.setdiff1d(current, vals)
    else:
        new = np.unique(vals)
    check_capacity(spec, new)
    return apply_list(sup, name, op, vals, new)


def check_capacity(spec, new) -> None:
    if len(new) > spec.capacity:
        raise AdminError("LIST_FULL", f"list={spec.name!r}: {len(new)} values over capacity={spec.capacity}")


def apply_list(sup, name, op, vals, new):
    """Log then publish a list change validated by the caller (this admin plane, or a
    cluster node applying the control bucket: engine.cluster.control_apply)."""
    fs = _fs(sup)
    log_change(sup, {"cmd": f"list-{op}", "name": name, "values": [int(v) for v in vals]})
    fs.replace_list(name, as_values(fs.array(f"fl_{name}"), new))
    enf = sup.enforcement
    if enf is not None and enf.enforces(name):
        # the kernel's map before the reply (engine.enforcement)
        return {"name": name, "count": int(len(new)), "enforced": enf.mirror(name, op, vals, new)}
    return {"name": name, "count": int(len(new))}


def _state_key(sup, spec, key):
    """The key as its field's Python value: an int in the field's range (never a bool or a
    float: 1.5, 2**64 and -1 are refused for a u64, not wrapped), or a str for bytesN."""
    field = sup.features.fs.schema.field(spec.key)
    if field.kind in ("uint", "int"):
        if isinstance(key, bool) or not isinstance(key, int):
            raise AdminError("BAD_ARGUMENT", f"key: must be an integer ({field.type}), got {type(key).__name__}")
        if not field.lo <= key <= field.hi:
            raise AdminError("BAD_ARGUMENT", f"key: out of range for {field.type} [{field.lo}, {field.hi}]")
        return key
    if field.kind == "bytes":
        if not isinstance(key, str) or len(key.encode()) > field.size:
            raise AdminError("BAD_ARGUMENT", f"key: must be a string of at most {field.size} bytes ({field.type})")
        return key
    raise AdminError("BAD_ARGUMENT", f"key: state keyed by a {field.type} field cannot be set here")


def check_state(sup, args):
    """(name, key) of a set-state request, checked against the engine and given its slot
    (_claim_slot); nothing logged or visible."""
    fs = _fs(sup)
    name = args["name"]
    spec = next((s for s in sup.features.specs.states if s.name == name), None)
    if spec is None:
        names = ", ".join(s.name for s in sup.features.specs.states) or "none"
        raise AdminError("UNKNOWN_STATE", f"state={name!r}; states: {names}")
    key = _state_key(sup, spec, args["key"])
    _claim_slot(fs, spec, key)
    return name, key


def set_state(sup, args):
    fs = _fs(sup)
    name, key = check_state(sup, args)
    state = args["state"]
    log_change(sup, {"cmd": "set-state", "name": name, "key": key, "state": state})
    fs.set_state(name, key, STATE_NAMES[state])
    return {"name": name, "key": key, "state": state}


def _claim_slot(fs, spec, key) -> None:
    """Give ``key`` its slot now, with the state it has (only the admin plane writes states,
    and a key without a slot is ACTIVE): a change nobody can see, which fails with STATE_FULL
    before anything is logged. A full table after logging left an entry that recovery could
    not apply, and the engine would not start."""
    k = np.uint64(key_from_python(key, fs.schema.field(spec.key).type))
    current = int(_read_state(fs.array(f"st_{spec.name}"), spec.capacity, spec.slot_words, spec.probe_len, k))
    try:
        fs.set_state(spec.name, key, current)
    except ValueError as e:
        raise AdminError("STATE_FULL", str(e)) from None


def halt(sup, args):
    on = args["cmd"] == "halt"
    fs = _fs(sup)
    log_change(sup, {"cmd": args["cmd"]})
    fs.set_halt(on)
    return {"global_halt": on}


MAX_LIFTS = 4096                   # addresses in one autoblock-remove


def autoblock_remove(sup, args):
    """Lift rule blocks (block_source) before their expiry: every address parsed first (a bad
    one: BAD_ADDRESS, nothing logged or lifted), then logged, then each kernel map entry
    deleted (engine.autoblock.lift) before the reply, so the next packet from it is judged
    without it. A lift is this engine's kernel state: recovery and a cluster's other nodes
    do not replay it (the blocks themselves do not outlive the engine)."""
    if not args["values"]:
        raise AdminError("BAD_ARGUMENT", "values: at least one address")
    sources = []
    for i, v in enumerate(args["values"]):
        try:
            sources.append(peer_key(v))
        except ValueError as e:
            raise AdminError("BAD_ADDRESS", f"values[{i}]: {e}") from None   # bounded: shm.ipv6
    sources = list(dict.fromkeys(sources))
    log_change(sup, {"cmd": "autoblock-remove", "values": [format_peer(s) for s in sources]})
    lifted = set(lift(sup.enforcement, sources))
    shown = auto_show(sup.enforcement)
    return {"name": AUTO_LIST, "lifted": [format_peer(s) for s in sources if s in lifted],
            "not_blocked": [format_peer(s) for s in sources if s not in lifted],
            "count": shown["count"], "enforced": shown["enforced"]}


def features(sup, args):
    fs = _fs(sup)
    return {"counters": fs.counters(), "memory": fs.memory_report()}


_LIST_ARGS = {"name": (NAME, True), "values": (list_of(int_or_string, MAX_ADMIN_VALUES), False),
              "file": (PATH, False)}
COMMANDS = {"list-show": (list_cmd, {"name": (NAME, True)}), "list-add": (list_cmd, _LIST_ARGS),
            "list-remove": (list_cmd, _LIST_ARGS), "list-replace": (list_cmd, _LIST_ARGS),
            "set-state": (set_state, {"name": (NAME, True), "key": (int_or_string, True),
                                      "state": (one_of(*STATE_NAMES), True)}),
            "halt": (halt, NO_ARGS), "resume": (halt, NO_ARGS), "features": (features, NO_ARGS),
            "autoblock-remove": (autoblock_remove, {"values": (list_of(int_or_string, MAX_LIFTS), True)})}
