"""The engine's side of kernel enforcement (``enforce:``; the program and its maps:
bpf/enforce.py). At start, after recovery has rebuilt the lists, the enforced lists are
copied into the maps and the program is attached; the admin plane's list changes are
mirrored in the same step (``mirror``); every stop detaches it (``close``), and the next
start removes one a killed run left. When it cannot run here (not root, no bcc, no such
interface, attach refused): one line and the engine serves without it, or the start is
refused with that line when ``enforce.required`` is true.
"""
from __future__ import annotations

import bisect
import collections
import ipaddress
import json
import subprocess
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from bpf.availability import check_ebpf
from bpf.enforce import ADDR_TYPES, AUTO_REASON, NET6_TYPES, EnforceError, Enforcer
from bpf.spawn import SidecarUnavailable, port_of_bind
from engine.preflight import StartupError
from shm.features.lists import list_values
from shm.ipv4 import format_ipv4
from shm.ipv6 import format_source6
from shm.runtime.endpoints import parse_zmq_bind


def resolve_interface(name: str, bind: str) -> str:
    """``auto``: the interface holding ingress.bind's address (lo for loopback)."""
    if name != "auto":
        return name
    ep = parse_zmq_bind(bind, "ingress.bind")
    if ep.kind == "interface":
        return ep.host
    addr = ep.addresses[0] if ep.addresses else ""
    if addr and ipaddress.ip_address(addr).is_loopback:
        return "lo"
    name = _interface_of(addr) if addr else None
    if name is not None:
        return name
    raise EnforceError(f"enforce: no interface holds ingress.bind's address {addr!r}; "
                       "set enforce.interface")


def _interface_of(addr: str) -> str | None:
    """The interface holding ``addr`` (IPv4 or IPv6, compared as addresses: ip prints IPv6
    compressed, the bind may spell it otherwise), None if none does."""
    want = ipaddress.ip_address(addr)
    out = subprocess.run(["ip", "-j", f"-{want.version}", "addr", "show"], capture_output=True,
                         text=True, timeout=10)
    for link in json.loads(out.stdout or "[]"):
        for a in link.get("addr_info", []):
            try:
                if ipaddress.ip_address(a.get("local", "")) == want:
                    return link["ifname"]
            except ValueError:
                continue
    return None


class Enforcement:
    """An attached Enforcer and the lists it mirrors."""

    UPDATE_BOUNDS_S = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)

    def __init__(self, enforcer: Enforcer, log):
        self.enforcer, self.log = enforcer, log
        self.stopped = False
        # mirror durations (engine list published -> kernel map updated): one slot per bound + Inf
        self.update_counts = [0] * (len(self.UPDATE_BOUNDS_S) + 1)
        self.update_sum_s = 0.0
        self.drops: collections.deque = collections.deque(maxlen=DROP_LOG_LEN)
        self._drops_lock = threading.Lock()     # scrapes run on several threads, one ring reader
        self.auto_cells = None      # ingress.autoblock's control cells (engine.autoblock)

    def last_drops(self) -> list[dict]:
        """The newest sampled drop events (the program sends at most 1000/s per CPU), oldest
        first, with wall time (time_ns, like /stats' other logs)."""
        with self._drops_lock:
            if not self.stopped and self.enforcer.bpf is not None:
                wall = time.time_ns() - time.monotonic_ns()
                for e in self.enforcer.poll_events():
                    src = format_source6(e.saddr) if e.family == 6 else format_ipv4(e.saddr)
                    self.drops.append({"time_ns": e.ts_ns + wall, "source": src,
                                       "port": e.dport, "list": e.list, "generation": e.generation,
                                       "mono_ns": e.ts_ns})
            return list(self.drops)

    def enforces(self, name: str) -> bool:
        return not self.stopped and name in self.enforcer.types

    def mirror(self, name: str, op: str, values, new) -> bool:
        """After the engine's list ``name`` changed by ``op`` (add/remove with ``values``,
        replace with the whole ``new``): the kernel's maps, before the admin reply. The maps
        hold every enforced list at its capacity, so an update cannot be refused for room; if
        the kernel refuses one anyway, enforcement stops (detached, one line) rather than
        judge packets by a list that differs from the engine's. False then."""
        t0 = time.perf_counter()
        try:
            if op == "add":
                self.enforcer.add(name, values)
            elif op == "remove":
                self.enforcer.remove(name, values)
            else:
                self.enforcer.replace(name, new)
            took_s = time.perf_counter() - t0
            self.update_counts[bisect.bisect_left(self.UPDATE_BOUNDS_S, took_s)] += 1
            self.update_sum_s += took_s
            return True
        except Exception as e:            # bcc raises bare Exception on a map update
            self.log(f"risk-engine: enforce: updating list={name!r} in the kernel failed "
                     f"({e}); enforcement detached, serving without it")
            self.stopped = True
            self.close()
            return False

    def close(self) -> None:
        try:
            self.enforcer.close()
        except EnforceError as e:
            self.log(f"risk-engine: {e}")


DROP_LOG_LEN = 32


def drop_log(sup) -> list[dict]:
    """/stats' log.enforce_drops: the last sampled drops, [] without enforcement."""
    enf = getattr(sup, "enforcement", None)
    return enf.last_drops() if enf is not None else []


def _open(cfg, features, log) -> Enforcement:
    e = cfg.enforce
    missing = check_ebpf(tracepoints=False)
    if missing is not None:
        raise EnforceError(f"enforce: {missing.reason}")
    try:
        ports = e.ports or (port_of_bind(cfg.ingress.bind),)
    except SidecarUnavailable as err:
        raise EnforceError(f"enforce: {err}") from None
    specs = {ls.name: ls for ls in features.specs.lists}
    lists = tuple((n, specs[n].type) for n in e.lists)
    cap = [sum(specs[n].capacity for n, t in lists if (t in ADDR_TYPES) == addr and t not in NET6_TYPES)
           for addr in (True, False)]
    cap6 = sum(specs[n].capacity for n, t in lists if t in NET6_TYPES)
    try:
        enf = Enforcer(e.mode, resolve_interface(e.interface, cfg.ingress.bind), ports, lists,
                       max_addrs=max(cap[0], 1), max_prefixes=max(cap[1], 1),
                       max_prefixes6=max(cap6, 1))
    except ValueError as err:
        raise EnforceError(f"enforce: {err}") from None
    enf.load()
    try:
        for n, _ in lists:                     # every list in the maps before a packet is judged
            enf.replace(n, list_values(features.fs.array(f"fl_{n}")))
        for line in enf.attach():
            log(f"risk-engine: enforce: {line}")
    except BaseException:
        enf.close()
        raise
    counts = ", ".join(f"{n} {c}" for n, c in enf.entries().items())
    log(f"risk-engine: enforce: {e.mode} on {enf.ifname}, TCP ports {', '.join(map(str, ports))}; "
        f"dropping the sources of {counts}")
    return Enforcement(enf, log)


def start_enforcement(cfg, features, log) -> Enforcement | None:
    """None when enforce.mode is off or (not required) it cannot run here."""
    if cfg.enforce.mode == "off":
        return None
    try:
        return _open(cfg, features, log)
    except EnforceError as err:
        if cfg.enforce.required:
            raise StartupError(f"{err} (enforce.required: true)") from None
        log(f"risk-engine: {err}; serving without enforcement")
        return None


def metric_families(enf: Enforcement | None):
    """The enforcement metrics (engine.exporter), their families always, samples while the
    kernel enforces: the per-CPU counters summed at scrape, never touched per packet here."""
    on = enf is not None and not enf.stopped
    yield GaugeMetricFamily("risk_enforce_enabled", "1 while the kernel drops the enforced "
                            "lists' sources (enforce:)", value=float(on))
    drop = CounterMetricFamily("risk_enforce_dropped_packets", "Packets the kernel dropped, by "
                               "the enforced list holding their source, or auto-blocked (a "
                               "block_source rule's block)", labels=["reason"])
    passed = CounterMetricFamily("risk_enforce_passed_packets", "Packets to an enforced port "
                                 "whose source no enforced list holds", labels=[])
    entries = GaugeMetricFamily("risk_enforce_map_entries", "Values of each enforced list in "
                                "the kernel's maps", labels=["list"])
    if on:
        c = enf.enforcer.counters()
        for name, _ in enf.enforcer.lists:
            drop.add_metric([name], float(c[f"dropped:{name}"]))
        drop.add_metric([AUTO_REASON], float(c[f"dropped:{AUTO_REASON}"]))   # block_source rules
        passed.add_metric([], float(c["passed"]))
        for name, n in enf.enforcer.entries().items():
            entries.add_metric([name], float(n))
    counts = enf.update_counts if enf is not None else [0] * (len(Enforcement.UPDATE_BOUNDS_S) + 1)
    cum = [sum(counts[:i + 1]) for i in range(len(counts))]
    upd = HistogramMetricFamily("risk_enforce_update_seconds", "An admin list change: from the "
                                "engine's list published to the kernel's map updated (the reply "
                                "follows)", buckets=[*zip(map(str, Enforcement.UPDATE_BOUNDS_S), cum),
                                                     ("+Inf", cum[-1])],
                                sum_value=enf.update_sum_s if enf is not None else 0.0)
    yield from (drop, passed, entries, upd)
    auto = CounterMetricFamily("risk_enforce_auto_blocks", "Decisions that fired a block_source "
                               "rule, by outcome: blocked (the sender in the kernel's map before "
                               "the reply), no_peer (no sender address known), failed (the kernel "
                               "refused: map full)", labels=["outcome"])
    cells = enf.auto_cells if enf is not None else None
    for i, outcome in enumerate(("blocked", "no_peer", "failed")):
        auto.add_metric([outcome], float(cells[1 + i]) if cells is not None else 0.0)
    yield auto
