"""The ``enforce:`` section: which listed sources the kernel drops before the stack sees them
(bpf/enforce.py, docs/EBPF.md). Checked completely here, every error reported with its key
path (shm.runtime.config_check); whether the interface exists and the program attaches is
known only at start, where it is reported in one line (or refuses the start when required)."""
from __future__ import annotations

import difflib
from typing import Mapping

from shm.runtime.config_check import report
from shm.runtime.config_types import ConfigError, EnforceConfig
from shm.runtime.endpoints import EndpointError, parse_zmq_bind

KEYS = {"mode", "interface", "lists", "ports", "required"}
MODES = ("off", "xdp", "tc")
# ipv4/u32 lists go to the kernel's address hash, cidr4 lists to its prefix trie, cidr6 to its IPv6 one
ENFORCEABLE_TYPES = ("ipv4", "u32", "cidr4", "cidr6")
MAX_PORTS = 64
IFNAMSIZ = 16            # a Linux interface name is at most 15 bytes (dev_valid_name)


def _valid_ifname(name: str) -> bool:
    return (0 < len(name.encode()) < IFNAMSIZ and name not in (".", "..") and name.isprintable()
            and not any(c in name for c in "/:") and not any(c.isspace() for c in name))


def _mode(sec: Mapping) -> str:
    v = sec.get("mode", EnforceConfig.mode)
    if v not in MODES:     # YAML reads a bare off as False: say so
        hint = " (quote it: 'off'; YAML reads a bare off as false)" if v is False else ""
        report(ConfigError("enforce.mode", f"must be one of {', '.join(MODES)}, got {v!r}{hint}"))
        return EnforceConfig.mode
    return v


def _interface(sec: Mapping) -> str:
    v = sec.get("interface", EnforceConfig.interface)
    if not isinstance(v, str) or not (v == "auto" or _valid_ifname(v)):
        report(ConfigError("enforce.interface", "must be auto or an interface name (1-15 bytes, "
                                                f"no '/', ':' or whitespace), got {v!r}"))
        return EnforceConfig.interface
    return v


def _lists(sec: Mapping, lists: Mapping) -> tuple[str, ...]:
    v = sec.get("lists", [])
    if not isinstance(v, list) or not all(isinstance(n, str) for n in v):
        report(ConfigError("enforce.lists", f"must be a list of list names, got {v!r}"))
        return ()
    out: list[str] = []
    for i, name in enumerate(v):
        path = f"enforce.lists[{i}]"
        if name in out:
            report(ConfigError(path, f"{name!r} is named twice"))
        elif name not in lists:
            close = difflib.get_close_matches(name, sorted(map(str, lists)), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            report(ConfigError(path, f"no list {name!r} in lists:; {hint}"
                                     f"(lists: {', '.join(sorted(map(str, lists))) or 'none'})"))
        else:
            t = lists[name].get("type") if isinstance(lists[name], Mapping) else None
            if isinstance(t, str) and t not in ENFORCEABLE_TYPES:
                report(ConfigError(path, f"list {name!r} is of type {t}; the kernel takes "
                                         f"{', '.join(ENFORCEABLE_TYPES)} lists"))
            else:                    # a missing type: the lists: check reports it
                out.append(name)
    return tuple(out)


def _ports(sec: Mapping) -> tuple[int, ...]:
    v = sec.get("ports", [])
    if not isinstance(v, list) or len(v) > MAX_PORTS or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in v):
        report(ConfigError("enforce.ports", f"must be a list of at most {MAX_PORTS} TCP ports "
                                            f"1..65535, got {v!r}"))
        return ()
    if len(set(v)) != len(v):
        report(ConfigError("enforce.ports", f"a port is named twice in {v!r}"))
    return tuple(sorted(set(v)))


def _required(sec: Mapping) -> bool:
    v = sec.get("required", EnforceConfig.required)
    if not isinstance(v, bool):
        report(ConfigError("enforce.required", f"must be true or false, got {v!r}"))
        return EnforceConfig.required
    return v


def _front_door(bind: str):
    try:
        return parse_zmq_bind(bind, "ingress.bind")
    except EndpointError:
        return None              # check_binds reports it


def parse_enforce(sec: Mapping, ingress_bind: str, lists: Mapping) -> EnforceConfig:
    """``sec``: the enforce: mapping (unknown keys already reported); ``lists``: the raw
    lists: section, to check each named list exists and has a type the kernel can hold."""
    out = EnforceConfig(mode=_mode(sec), interface=_interface(sec), lists=_lists(sec, lists),
                        ports=_ports(sec), required=_required(sec))
    if out.mode == "off":
        return out
    if sec.get("lists", []) == []:
        report(ConfigError("enforce.lists", f"mode {out.mode} needs at least one list to enforce"))
    ep = _front_door(ingress_bind)
    if ep is None:
        return out
    if not out.ports and (ep.transport != "tcp" or ep.port is None):
        report(ConfigError("enforce.ports", f"empty means ingress.bind's port, but {ingress_bind!r} "
                                            "has no fixed TCP port: name the ports"))
    if out.interface == "auto":
        one = ep.kind == "interface" or (ep.kind in ("ip", "name") and len(ep.addresses) == 1)
        if ep.transport != "tcp" or not one:
            report(ConfigError("enforce.interface", f"auto picks the interface holding "
                                                    f"ingress.bind's address, but {ingress_bind!r} "
                                                    "is not one address: name the interface"))
    return out


def enforce_to_raw(e: EnforceConfig) -> dict:
    return {"mode": e.mode, "interface": e.interface, "lists": list(e.lists),
            "ports": list(e.ports), "required": e.required}
