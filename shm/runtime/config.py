"""Engine configuration: one YAML file, validated once into the frozen dataclasses of
shm.runtime.config_types.

Every error names the key path and the value (``ConfigError``); ``risk-engine serve``
turns it into exit code 2. Relative file paths are resolved against the directory of the
config file that names them, and the placeholders {state}, {instance} and {run} are replaced
here, once: a Config holds final paths, and parsing it again (a child reading the
supervisor's hand-off, shm.runtime.rundir) gives the same Config. A file overlays the bundled
``engine/default.yaml`` (shm.runtime.config_overlay); when no file is given that one is used.
Every error found is reported at once (shm.runtime.config_check).
"""
from __future__ import annotations

import os
import sys
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Mapping

import yaml

from shm.runtime.config_check import attempt, collecting, report, unknown_key
from shm.runtime.config_cluster import check_cluster_features, cluster_to_raw, parse_cluster
from shm.runtime.config_enforce import KEYS as ENFORCE_KEYS, enforce_to_raw, parse_enforce
from shm.runtime.runroot import run_dir_for
from shm.runtime.config_types import (AdminConfig, Config, ConfigError, CurveConfig, DurabilityConfig,
                                      IngressConfig, MetricsConfig, RingsConfig, RulesConfig, WorkersConfig)
from shm.schema import Schema, SchemaError
from shm.runtime.endpoints import EndpointError, parse_host_port, parse_zmq_bind

DEFAULT_CONFIG = Path(__file__).parents[2] / "engine" / "default.yaml"   # beside the CLI that names it


# --- small typed getters -------------------------------------------------------------------

def _section(raw: Mapping, key: str, allowed: set[str]) -> dict:
    val = raw.get(key, {}) if raw else {}
    if val is None:
        val = {}
    if not isinstance(val, Mapping):
        report(ConfigError(key, f"must be a mapping, got {type(val).__name__}"))
        return {}
    for k in val:
        if k not in allowed:
            report(unknown_key(f"{key}.{k}", k, allowed))
    return {k: v for k, v in val.items() if k in allowed}


def _int(sec: dict, path: str, name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    v = sec.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        report(ConfigError(f"{path}.{name}", f"must be an integer, got {v!r}"))
        return default
    if lo is not None and v < lo or hi is not None and v > hi:
        report(ConfigError(f"{path}.{name}", f"must be in [{lo}, {hi}], got {v}"))
        return default
    return v


def _str(sec: dict, path: str, name: str, default: str, choices: tuple[str, ...] = ()) -> str:
    v = sec.get(name, default)
    if not isinstance(v, str):
        report(ConfigError(f"{path}.{name}", f"must be a string, got {v!r}"))
        return default
    if choices and v not in choices:
        report(ConfigError(f"{path}.{name}", f"must be one of {', '.join(choices)}, got {v!r}"))
        return default
    return v


def _bool(sec: dict, path: str, name: str, default: bool) -> bool:
    v = sec.get(name, default)
    if not isinstance(v, bool):
        report(ConfigError(f"{path}.{name}", f"must be true or false, got {v!r}"))
        return default
    return v


def _resolve(base: Path, p: str) -> str:
    return str(p if os.path.isabs(p) else (base / p).resolve())


def _curve(sec: dict, path: str, base: Path) -> CurveConfig:
    c = _section(sec, "curve", {"enabled", "server_secret_file", "authorized_keys_dir"}) if "curve" in sec else {}
    cc = CurveConfig(
        enabled=_bool(c, f"{path}.curve", "enabled", False),
        server_secret_file=_str(c, f"{path}.curve", "server_secret_file", ""),
        authorized_keys_dir=_str(c, f"{path}.curve", "authorized_keys_dir", ""),
    )
    if cc.enabled and not (cc.server_secret_file and cc.authorized_keys_dir):
        report(ConfigError(f"{path}.curve", "enabled needs server_secret_file and authorized_keys_dir"))
        return CurveConfig()
    if cc.enabled:
        cc = replace(cc, server_secret_file=_resolve(base, cc.server_secret_file),
                     authorized_keys_dir=_resolve(base, cc.authorized_keys_dir))
    return cc


IPC_PATH_MAX = 107       # sun_path less its NUL: libzmq cannot bind a longer ipc:// path


def _admin_bind(bind: str, instance: str) -> str:
    """admin.bind with {instance} and {run} (the instance's 0700 run directory, shm.runtime.rundir)
    replaced: the default socket is reachable only by root and the engine's user."""
    return bind.replace("{instance}", instance).replace("{run}", str(run_dir_for(instance)))


def check_binds(cfg: "Config") -> None:
    """Parse every bind address as libzmq / http.server will read it (shm.runtime.endpoints) and
    refuse an admin plane reachable from another machine unless admin.curve is on. Also run
    after CLI overrides (engine.cmd_serve)."""
    try:
        parse_zmq_bind(cfg.ingress.bind, "ingress.bind")
        if cfg.metrics.enabled:
            parse_host_port(cfg.metrics.bind, "metrics.bind")
        parse_host_port(cfg.metrics.ebpf_bind, "metrics.ebpf_bind")
        admin = parse_zmq_bind(cfg.admin.bind, "admin.bind")
    except EndpointError as e:
        key, _, msg = str(e).partition(": ")
        raise ConfigError(key, msg) from None
    if admin.transport == "ipc" and len(admin.path.encode()) > IPC_PATH_MAX:
        raise ConfigError("admin.bind", f"ipc path {admin.path!r} is {len(admin.path.encode())} bytes, "
                                        f"over the {IPC_PATH_MAX} a Unix socket address holds")
    if not admin.local_only and not cfg.admin.curve.enabled:
        why = {"wildcard": "binds every interface", "interface": "names a network interface"}.get(
            admin.kind, f"resolves to {', '.join(admin.addresses) or 'nothing'}")
        raise ConfigError("admin.bind", f"{cfg.admin.bind!r} {why}, not only loopback: use ipc://, "
                                        f"127.0.0.1 or [::1], or enable admin.curve first")


def state_root() -> str:
    """{state} in journal.dir / snapshot.dir: $STATE_DIRECTORY (set by systemd's
    StateDirectory=), else /var/lib/risk-engine for root, else
    ${XDG_STATE_HOME:-~/.local/state}/risk-engine. Not /var/tmp: tmpfiles ages files out of it,
    and an admin.log untouched for 30 days would go with them."""
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/risk-engine"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "risk-engine")


def _state_path(p: str, instance: str) -> str:
    return p.replace("{state}", state_root()).replace("{instance}", instance)


def _durability(raw: Mapping, base: Path, instance: str) -> DurabilityConfig:
    d = DurabilityConfig
    j = _section(raw, "journal", {"enabled", "dir", "fsync", "interval_ms", "segment_bytes",
                                  "max_files", "max_age_s", "skip_corrupt_records", "on_unavailable"})
    s = _section(raw, "snapshot", {"dir", "interval_s", "keep"})
    jdir = _state_path(_str(j, "journal", "dir", d.journal_dir), instance)
    sdir = _state_path(_str(s, "snapshot", "dir", d.snapshot_dir), instance)
    out = DurabilityConfig(
        journal_enabled=_bool(j, "journal", "enabled", True),
        journal_dir=_resolve(base, jdir),
        fsync=_str(j, "journal", "fsync", d.fsync, ("none", "interval_ms", "batch")),
        interval_ms=_int(j, "journal", "interval_ms", d.interval_ms, 1, 60_000),
        segment_bytes=_int(j, "journal", "segment_bytes", d.segment_bytes, 1 << 16, 1 << 40),
        max_files=_int(j, "journal", "max_files", d.max_files, 0, 1 << 20),
        max_age_s=_int(j, "journal", "max_age_s", d.max_age_s, 0, 1 << 31),
        snapshot_dir=_resolve(base, sdir),
        snapshot_interval_s=_int(s, "snapshot", "interval_s", d.snapshot_interval_s, 1, 86_400),
        snapshot_keep=_int(s, "snapshot", "keep", d.snapshot_keep, 1, 1000),
        skip_corrupt_journal_records=_bool(j, "journal", "skip_corrupt_records", False),
        on_journal_unavailable=_str(j, "journal", "on_unavailable", d.on_journal_unavailable,
                                    ("allow", "review", "block")))
    try:
        out.journal_config()
    except ValueError as e:
        msg = str(e)
        report(ConfigError(msg.split(":", 1)[0], msg.split(":", 1)[1].strip()))
    return out


_TOP = {"ingress", "metrics", "admin", "workers", "rings", "schema", "rules",
        "features", "lists", "state", "instance", "journal", "snapshot", "enforce", "cluster"}


def _instance(raw: Mapping, override: str | None) -> str:
    inst, key = (raw.get("instance", "re"), "instance") if override is None else (override, "--instance")
    if not isinstance(inst, str) or not inst.isalnum() or len(inst) > 16:
        raise ConfigError(key, f"must be 1-16 letters/digits, got {inst!r}")
    return inst


def parse_config(raw: Mapping | None, path: str = "<memory>", instance: str | None = None) -> Config:
    """Validate a parsed YAML mapping. Raises ConfigError naming the key path, or
    ConfigErrors (shm.runtime.config_check) listing every error found. ``instance``
    overrides the file's (serve --instance) before any path is made from it."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"{path}: top level must be a mapping")
    with collecting() as errors:
        out = _parse(raw, path, instance, errors)
    return out


def _parse(raw: Mapping, path: str, instance: str | None, errors: list) -> Config | None:
    for k in raw:
        if k not in _TOP:
            report(unknown_key(str(k), k, _TOP))
    base = Path(path).resolve().parent if path != "<memory>" else Path.cwd()
    inst = attempt(_instance, raw, instance) or "re"

    s = _section(raw, "ingress", {"bind", "max_frame_bytes", "max_batch", "default_deadline_ms",
                                  "default_deadline_per_event_us",
                                  "on_timeout", "on_overload", "dedup_window_s", "dedup_max_entries", "dedup_max_bytes",
                                  "max_inflight", "max_inflight_per_peer", "max_connections", "spin_us", "curve",
                                  "compiled_loop"})
    ingress = IngressConfig(
        bind=_str(s, "ingress", "bind", IngressConfig.bind),
        max_frame_bytes=_int(s, "ingress", "max_frame_bytes", IngressConfig.max_frame_bytes, 64, 1 << 30),
        max_batch=_int(s, "ingress", "max_batch", IngressConfig.max_batch, 1, 1 << 16),
        default_deadline_ms=_int(s, "ingress", "default_deadline_ms", IngressConfig.default_deadline_ms, 1, 3_600_000),
        default_deadline_per_event_us=_int(s, "ingress", "default_deadline_per_event_us",
                                           IngressConfig.default_deadline_per_event_us, 0, 1_000_000),
        on_timeout=_str(s, "ingress", "on_timeout", IngressConfig.on_timeout, ("allow", "block")),
        on_overload=_str(s, "ingress", "on_overload", IngressConfig.on_overload, ("error", "allow", "review", "block")),
        dedup_window_s=_int(s, "ingress", "dedup_window_s", IngressConfig.dedup_window_s, 0, 86_400),
        dedup_max_entries=_int(s, "ingress", "dedup_max_entries", IngressConfig.dedup_max_entries, 1, 1 << 26),
        dedup_max_bytes=_int(s, "ingress", "dedup_max_bytes", IngressConfig.dedup_max_bytes, 64, 1 << 36),
        max_inflight=_int(s, "ingress", "max_inflight", IngressConfig.max_inflight, 1, 1 << 22),
        max_inflight_per_peer=_int(s, "ingress", "max_inflight_per_peer", IngressConfig.max_inflight_per_peer,
                                   0, 1 << 22),
        max_connections=_int(s, "ingress", "max_connections", IngressConfig.max_connections, 1, 1 << 20),
        spin_us=_int(s, "ingress", "spin_us", IngressConfig.spin_us, 0, 100_000),
        curve=_curve(s, "ingress", base),
        compiled_loop=_bool(s, "ingress", "compiled_loop", IngressConfig.compiled_loop),
    )
    s = _section(raw, "metrics", {"enabled", "bind", "ebpf_bind"})
    metrics = MetricsConfig(enabled=_bool(s, "metrics", "enabled", True),
                            bind=_str(s, "metrics", "bind", MetricsConfig.bind),
                            ebpf_bind=_str(s, "metrics", "ebpf_bind", MetricsConfig.ebpf_bind))
    s = _section(raw, "admin", {"bind", "curve"})
    admin = AdminConfig(bind=_admin_bind(_str(s, "admin", "bind", AdminConfig.bind), inst),
                        curve=_curve(s, "admin", base))

    s = _section(raw, "workers", {"count", "cpus", "ingress_cpu", "spin_us", "standby"})
    cpus = s.get("cpus", [])
    if not isinstance(cpus, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus):
        report(ConfigError("workers.cpus", f"must be a list of CPU numbers, got {cpus!r}"))
        cpus = []
    workers = WorkersConfig(count=_int(s, "workers", "count", 0, 0, 256), cpus=tuple(cpus),
                            ingress_cpu=_int(s, "workers", "ingress_cpu", -1, -1, 4095),
                            spin_us=_int(s, "workers", "spin_us", WorkersConfig.spin_us, 0, 100_000),
                            standby=_bool(s, "workers", "standby", WorkersConfig.standby))

    s = _section(raw, "rings", {"capacity"})
    cap = _int(s, "rings", "capacity", RingsConfig.capacity, 2, 1 << 24)
    if cap & (cap - 1):
        report(ConfigError("rings.capacity", f"must be a power of two, got {cap}"))
    rings = RingsConfig(capacity=cap)

    s = _section(raw, "schema", {"shard_key", "fields"})
    schema = None
    if "fields" not in s:
        report(ConfigError("schema.fields", "is required"))
    else:
        try:
            schema = Schema.build(s["fields"], _str(s, "schema", "shard_key", ""))
        except SchemaError as e:
            report(ConfigError("schema", str(e)))

    s = _section(raw, "rules", {"files", "thresholds", "on_error", "watch"})
    files = s.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        report(ConfigError("rules.files", f"must be a list of paths, got {files!r}"))
        files = []
    th = s.get("thresholds", {}) or {}
    if not isinstance(th, Mapping) or any(k not in ("review", "block") for k in th) \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in th.values()):
        report(ConfigError("rules.thresholds", f"must map review/block to numbers, got {th!r}"))
        th = {}
    rules = RulesConfig(files=tuple(_resolve(base, f) for f in files),
                        thresholds=tuple((k, float(v)) for k, v in th.items()),
                        on_error=_str(s, "rules", "on_error", "skip", ("skip", "fire")),
                        watch=_bool(s, "rules", "watch", False))

    durability = _durability(raw, base, inst)

    extra = {}
    for k in ("features", "lists", "state"):
        v = raw.get(k, {}) or {}
        if not isinstance(v, Mapping):
            report(ConfigError(k, f"must be a mapping, got {type(v).__name__}"))
            v = {}
        extra[k] = dict(v)
    enforce = parse_enforce(_section(raw, "enforce", ENFORCE_KEYS), ingress.bind, extra["lists"])
    out = Config(path=path, ingress=ingress, metrics=metrics, admin=admin, workers=workers,
                 rings=rings, schema=schema, rules=rules, instance=inst, durability=durability,
                 enforce=enforce, cluster=parse_cluster(raw, ingress.bind, base), **extra)
    if out.cluster is not None and schema is not None:
        check_cluster_features(extra["features"], schema.shard_key)
    attempt(check_binds, out)
    return None if errors else out      # collecting() raises the errors


def load_config(path: str | os.PathLike | None = None, instance: str | None = None) -> Config:
    """The config file at ``path`` over the bundled one (shm.runtime.config_overlay; no
    path: the bundled one), validated; ``instance`` overrides its instance (parse_config)."""
    p = Path(path) if path else DEFAULT_CONFIG
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError("", f"cannot read config {p}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{p}: invalid YAML: {e}") from None
    if isinstance(raw, Mapping) and p.resolve() != DEFAULT_CONFIG.resolve():
        from shm.runtime.config_overlay import overlay     # a file names only what it changes
        raw = overlay(portable_raw(), raw)
    return parse_config(raw, str(p), instance)


def load_config_cli(path: str | os.PathLike | None) -> Config | None:
    """For commands: the config, or None after printing the error (the caller exits 2)."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return None


def portable_raw(path: str | os.PathLike | None = None) -> dict:
    """The YAML mapping of a config file (default: the bundled one) with its file paths
    (rule files, list files, CURVE key files) made absolute, so a changed copy can be written
    anywhere (bench and test runs point the journal elsewhere, change ports ...)."""
    p = Path(path).resolve() if path else DEFAULT_CONFIG
    raw = yaml.safe_load(p.read_text()) or {}

    def absolute(f):
        return str((p.parent / f).resolve())

    rules = raw.setdefault("rules", {})
    rules["files"] = [absolute(f) for f in rules.get("files", [])]
    for spec in (raw.get("lists") or {}).values():
        if spec.get("file"):
            spec["file"] = absolute(spec["file"])
    for section in ("ingress", "admin"):
        curve = (raw.get(section) or {}).get("curve") or {}
        for key in ("server_secret_file", "authorized_keys_dir"):
            if curve.get(key):
                curve[key] = absolute(curve[key])
    return raw


def config_to_raw(cfg: Config) -> dict:
    """The YAML-shaped mapping that ``parse_config(config_to_raw(cfg), cfg.path)`` turns back
    into ``cfg``: how the supervisor hands the validated config (file + CLI overrides) to its
    children as plain data that they validate again (shm.runtime.rundir.write_config checks the
    round trip). Sections whose keys are their dataclass's fields are copied field by field."""

    def plain(v):
        if is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    d = cfg.durability
    return {
        "instance": cfg.instance,
        "ingress": plain(cfg.ingress), "metrics": plain(cfg.metrics), "admin": plain(cfg.admin),
        "workers": plain(cfg.workers), "rings": plain(cfg.rings),
        "schema": {"shard_key": cfg.schema.shard_key,
                   "fields": {f.name: f.type for f in cfg.schema.fields}},
        "rules": {"files": list(cfg.rules.files), "thresholds": dict(cfg.rules.thresholds),
                  "on_error": cfg.rules.on_error, "watch": cfg.rules.watch},
        "journal": {"enabled": d.journal_enabled, "dir": d.journal_dir, "fsync": d.fsync,
                    "interval_ms": d.interval_ms, "segment_bytes": d.segment_bytes,
                    "max_files": d.max_files, "max_age_s": d.max_age_s,
                    "skip_corrupt_records": d.skip_corrupt_journal_records,
                    "on_unavailable": d.on_journal_unavailable},
        "snapshot": {"dir": d.snapshot_dir, "interval_s": d.snapshot_interval_s,
                     "keep": d.snapshot_keep},
        "features": plain(cfg.features), "lists": plain(cfg.lists), "state": plain(cfg.state),
        "enforce": enforce_to_raw(cfg.enforce),
        **({"cluster": cluster_to_raw(cfg.cluster)} if cfg.cluster else {}),
    }
