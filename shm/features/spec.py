"""Parse the ``features``, ``lists`` and ``state`` config sections into frozen dataclasses.

Validated once against the schema; every error is a ``ConfigError`` naming the key path
(``features.ips_24h.window: ...``). Relative list file paths resolve against the config
file's directory.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from shm.runtime.config import ConfigError
from shm.runtime.config_check import attempt
from shm.features import layout
from shm.schema import Schema

KINDS = ("count", "sum", "avg", "min", "max", "distinct", "age", "last")
NEEDS_OF = {"sum", "avg", "min", "max", "distinct", "last"}
WINDOWED = {"count", "sum", "avg", "min", "max", "distinct"}
LIST_TYPES_RE = re.compile(r"^(u32|u64|i64|ipv4|cidr4|cidr6|bytes([0-9]+))$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DUR_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MIN_WINDOW_MS, MAX_WINDOW_MS = 1000, 7 * 86_400_000
DEFAULT_BUCKETS = 60
DEFAULT_DISTINCT_BUCKETS = 8
DEFAULT_REGISTERS = 64
DEFAULT_CAPACITY = 262_144
DEFAULT_PROBE = 32
RESERVED = {"ACTIVE", "REDUCING", "HALTED", "global_halt", "now_ms"}
_FEATURE_KEYS = {"kind", "key", "of", "window", "buckets", "registers", "capacity", "probe",
                 "update", "time"}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str
    key: tuple[str, ...]          # one or two schema fields
    of: str | None                # value field (sum/avg/min/max/distinct/last)
    window_ms: int                # 0 for age/last
    nbuckets: int                 # 0 for age/last
    registers: int                # distinct only (HLL m), else 0
    capacity: int                 # slots (keys)
    probe_len: int
    update: str                   # 'always' | 'unless_blocked'
    time: str                     # 'arrival' or an integer schema field holding ms

    @property
    def bucket_ms(self) -> int:
        return self.window_ms // self.nbuckets if self.nbuckets else 0

    @property
    def slot_words(self) -> int:
        return layout.slot_words(self.kind, self.nbuckets, self.registers)

    @property
    def bytes_per_key(self) -> int:
        return 8 * self.slot_words

    @property
    def expr_type(self) -> str:
        return "int" if self.kind in ("count", "distinct", "age") else "float"


@dataclass(frozen=True)
class ListSpec:
    name: str
    type: str                     # u32 | u64 | i64 | ipv4 | cidr4 | cidr6 | bytesN
    file: str                     # absolute path ('' = starts empty)
    capacity: int                 # max values (both halves of the double buffer)


@dataclass(frozen=True)
class StateSpec:
    name: str
    key: str
    capacity: int
    probe_len: int

    @property
    def slot_words(self) -> int:
        return layout.slot_words("state")


@dataclass(frozen=True)
class Specs:
    features: tuple[FeatureSpec, ...]
    lists: tuple[ListSpec, ...]
    states: tuple[StateSpec, ...]


def parse_duration_ms(path: str, v: Any) -> int:
    """'60s' | '10m' | '1h' | '7d' | '1500ms' | integer seconds -> milliseconds."""
    if isinstance(v, int) and not isinstance(v, bool):
        ms = v * 1000
    elif isinstance(v, str) and _DUR_RE.match(v.strip()):
        n, unit = _DUR_RE.match(v.strip()).groups()
        ms = int(n) * _UNIT_MS[unit]
    else:
        raise ConfigError(path, f"must be a duration like 60s, 10m, 1h, 7d, got {v!r}")
    if not MIN_WINDOW_MS <= ms <= MAX_WINDOW_MS:
        raise ConfigError(path, f"must be between 1s and 7d, got {v!r}")
    return ms


def _int(path: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(path, f"must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _name(section: str, name: Any, schema: Schema, taken: set) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{section}.{name}", "name must match [a-z][a-z0-9_]*")
    if name in schema.names or name in RESERVED or name in taken:
        raise ConfigError(f"{section}.{name}", "name clashes with a schema field, another "
                                               "feature/list/state or a reserved name")
    taken.add(name)
    return name


def _key_field(path: str, fname: Any, schema: Schema) -> str:
    if not isinstance(fname, str) or fname not in schema.names:
        raise ConfigError(path, f"{fname!r} is not a schema field")
    if schema.field(fname).kind not in ("uint", "int", "bool", "bytes"):
        raise ConfigError(path, f"{fname!r} must be an integer, bool or bytes field")
    return fname


def _default_buckets(window_ms: int, want: int) -> int:
    for n in range(want, 0, -1):
        if window_ms % n == 0:
            return n
    return 1


def parse_feature(name: str, raw: Any, schema: Schema) -> FeatureSpec:
    p = f"features.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(p, f"must be a mapping, got {raw!r}")
    for k in raw:
        if k not in _FEATURE_KEYS:
            raise ConfigError(f"{p}.{k}", f"unknown key (allowed: {', '.join(sorted(_FEATURE_KEYS))})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{p}.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    key = raw.get("key")
    keys = key if isinstance(key, list) else [key]
    if not 1 <= len(keys) <= 2:
        raise ConfigError(f"{p}.key", f"must be a field or a list of two fields, got {key!r}")
    keys = tuple(_key_field(f"{p}.key", k, schema) for k in keys)
    of = raw.get("of")
    if kind in NEEDS_OF:
        if not isinstance(of, str) or of not in schema.names:
            raise ConfigError(f"{p}.of", f"kind {kind} needs a schema field, got {of!r}")
        fk = schema.field(of).kind
        if kind == "distinct" and fk == "float":
            raise ConfigError(f"{p}.of", f"distinct needs an integer/bytes field, {of!r} is {fk}")
        if kind != "distinct" and fk not in ("uint", "int", "float", "bool"):
            raise ConfigError(f"{p}.of", f"kind {kind} needs a numeric field, {of!r} is {fk}")
    elif of is not None:
        raise ConfigError(f"{p}.of", f"kind {kind} takes no 'of', got {of!r}")
    window_ms = nb = registers = 0
    if kind in WINDOWED:
        if "window" not in raw:
            raise ConfigError(f"{p}.window", "is required for a windowed kind")
        window_ms = parse_duration_ms(f"{p}.window", raw["window"])
        want = DEFAULT_DISTINCT_BUCKETS if kind == "distinct" else DEFAULT_BUCKETS
        if "buckets" in raw:
            nb = _int(f"{p}.buckets", raw["buckets"], 1, 1024)
            if window_ms % nb:
                raise ConfigError(f"{p}.buckets", f"{nb} does not divide the window ({window_ms} ms)")
        else:
            nb = _default_buckets(window_ms, want)
        if kind == "distinct":
            registers = _int(f"{p}.registers", raw.get("registers", DEFAULT_REGISTERS), 16, 4096)
            if registers & (registers - 1):
                raise ConfigError(f"{p}.registers", f"must be a power of two, got {registers}")
    else:
        for k in ("window", "buckets"):
            if k in raw:
                raise ConfigError(f"{p}.{k}", f"kind {kind} has no window")
    if "registers" in raw and kind != "distinct":
        raise ConfigError(f"{p}.registers", "only for kind distinct")
    update = raw.get("update", "always")
    if update not in ("always", "unless_blocked"):
        raise ConfigError(f"{p}.update", f"must be always or unless_blocked, got {update!r}")
    time = raw.get("time", "arrival")
    if time != "arrival" and (time not in schema.names or schema.field(time).kind not in ("int", "uint")):
        raise ConfigError(f"{p}.time", f"must be 'arrival' or an integer field holding ms, got {time!r}")
    cap, probe = _capacity_probe(p, raw, DEFAULT_PROBE)
    return FeatureSpec(name, kind, keys, of, window_ms, nb, registers, cap, probe, update, time)


def parse_list(name: str, raw: Any, base: Path) -> ListSpec:
    p = f"lists.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(p, f"must be a mapping, got {raw!r}")
    for k in raw:
        if k not in ("type", "file", "capacity"):
            raise ConfigError(f"{p}.{k}", "unknown key (allowed: capacity, file, type)")
    t = raw.get("type")
    m = LIST_TYPES_RE.match(t) if isinstance(t, str) else None
    if not m or (m.group(2) and not 1 <= int(m.group(2)) <= 64):
        raise ConfigError(f"{p}.type", f"must be u32, u64, i64, ipv4, cidr4, cidr6 or bytesN (N <= 64), got {t!r}")
    f = raw.get("file", "")
    if not isinstance(f, str):
        raise ConfigError(f"{p}.file", f"must be a path, got {f!r}")
    if f and not Path(f).is_absolute():
        f = str((base / f).resolve())
    cap = _int(f"{p}.capacity", raw.get("capacity", 65_536), 1, 1 << 28)
    return ListSpec(name, t, f, cap)


def parse_state(name: str, raw: Any, schema: Schema) -> StateSpec:
    p = f"state.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(p, f"must be a mapping, got {raw!r}")
    for k in raw:
        if k not in ("key", "capacity", "probe"):
            raise ConfigError(f"{p}.{k}", "unknown key (allowed: capacity, key, probe)")
    key = _key_field(f"{p}.key", raw.get("key"), schema)
    return StateSpec(name, key, *_capacity_probe(p, raw, 64))


def _capacity_probe(p: str, raw: Mapping, default_probe: int) -> tuple[int, int]:
    """A table's ``capacity`` and ``probe``. The probe window is at most the table: a longer
    one wraps past the end of the table more than once, and the compiled lookups (which wrap
    once) would read and write beyond the table's buffer."""
    cap = _int(f"{p}.capacity", raw.get("capacity", DEFAULT_CAPACITY), 1, (1 << 32) - 1)
    return cap, min(cap, _int(f"{p}.probe", raw.get("probe", default_probe), 1, 1024))


def parse_specs(features: Mapping, lists: Mapping, state: Mapping, schema: Schema,
                base_dir: str | Path = ".") -> Specs:
    """Validate the three sections (as kept raw by shm.runtime.config.Config)."""
    taken: set = set()

    def each(section: str, items: Mapping, parse, arg) -> tuple:
        # attempt: inside config_check.collecting() every bad entry is reported, else the first raises
        got = (attempt(lambda n, r: parse(_name(section, n, schema, taken), r, arg), n, r)
               for n, r in (items or {}).items())
        return tuple(s for s in got if s is not None)
    return Specs(each("features", features, parse_feature, schema),
                 each("lists", lists, parse_list, Path(base_dir)),
                 each("state", state, parse_state, schema))


def specs_from_config(cfg) -> Specs:
    base = Path(cfg.path).resolve().parent if cfg.path != "<memory>" else Path.cwd()
    return parse_specs(cfg.features, cfg.lists, cfg.state, cfg.schema, base)
