"""Pass 0: read rule files (YAML) into RuleSource records that remember source positions.

The YAML is composed into nodes (never constructed from arbitrary tags: SafeLoader) so
every key and every character of a ``when`` expression maps back to ``file:line:col``.
Problems are reported to a Sink and the offending rule is dropped; the compiler refuses the
ruleset if anything was reported.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import yaml

from shm.types import ACTION_NAMES, Action
from rules.diagnostics import Sink
from shm.runtime.textfile import TextFileError, excerpt, read_text_file

RULE_ID_RE = re.compile(r"^[a-z0-9_]{1,64}$")
RULESET_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CONST_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_CONST_ITEMS = 4096
_RULE_KEYS = ("id", "when", "action", "score", "reason", "mode", "enabled", "block_source")
# block_source: {ttl: 10m}: the sender's address enters the kernel's drop map for ttl
# (engine.enforcement, docs/RULES.md); bounded so a typo cannot block a client for a year
BLOCK_TTL_MIN_MS, BLOCK_TTL_MAX_MS = 1000, 86_400_000
_TTL_RE = re.compile(r"^([0-9]{1,9})(ms|s|m|h)$")
_TTL_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_TOP_KEYS = ("ruleset", "version", "constants", "rules")


@dataclass(frozen=True)
class ConstantDef:
    name: str
    value: object        # int | float | bool | str | tuple of those
    line: int
    col: int


@dataclass
class RuleSource:
    file: str
    id: str
    when: str
    when_map: "PositionMap"
    action: int
    score: float
    reason: str
    mode: str            # 'enforce' | 'shadow'
    enabled: bool
    line: int
    col: int
    constants: dict = field(default_factory=dict)   # the file's ConstantDefs by name
    block_ttl_ms: int = 0   # block_source: {ttl}: 0 = the rule blocks no source


@dataclass
class RuleFile:
    path: str
    name: str
    version: int
    constants: dict
    rules: list


class PositionMap:
    """Maps an offset in an expression string to (line, col) in the file, both 1-based."""

    def __init__(self, points: list[tuple[int, int]] | None, fallback: tuple[int, int]):
        self.points = points
        self.fallback = fallback

    def at(self, text: str, lineno: int, col_utf8: int) -> tuple[int, int]:
        """Position of ast (lineno 1-based, col_offset in UTF-8 bytes) inside ``text``."""
        lines = text.split("\n")
        if not 1 <= lineno <= len(lines):
            return self.fallback
        prefix = lines[lineno - 1].encode()[:max(col_utf8, 0)].decode(errors="ignore")
        idx = sum(len(s) + 1 for s in lines[:lineno - 1]) + len(prefix)
        if self.points is None:
            return self.fallback
        if idx >= len(self.points):
            if not self.points:
                return self.fallback
            ln, c = self.points[-1]
            return ln, c + idx - len(self.points) + 1
        return self.points[idx]


def _position_map(src: str, node: yaml.ScalarNode) -> PositionMap:
    """Align a scalar's value with its raw text (plain, quoted w/o escapes, | and >)."""
    start = node.start_mark
    fallback = (start.line + 1, start.column + 1)
    value = node.value
    j, end = start.index, node.end_mark.index
    if node.style in ("|", ">"):
        nl = src.find("\n", j, end)
        if nl < 0:
            return PositionMap(None, fallback)
        j = nl + 1
    elif node.style in ('"', "'"):
        j += 1
    line, col = start.line, start.column + (j - start.index)
    if node.style in ("|", ">"):
        line, col = start.line + 1, 0
    points: list[tuple[int, int]] = []
    i = 0
    while i < len(value):
        if j < end and src[j] == value[i]:
            points.append((line + 1, col + 1))
            i += 1
        elif j < end and src[j] in " \t\r\n":
            pass
        elif value[i] in " \n":
            points.append((line + 1, col + 1))
            i += 1
            continue
        else:
            return PositionMap(None, fallback)
        if j < end and src[j] == "\n":
            line, col = line + 1, 0
        elif j < end:
            col += 1
        j += 1
    return PositionMap(points, fallback)


def _pos(node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _BadScalar(ValueError):
    pass


def _scalar(loader, node):
    """The scalar's value (SafeLoader: no code-carrying tags). A tag it refuses
    (``!!python/name:...``) or a bad scalar (``!!int "0x_"``) raises _BadScalar with the
    position; load_rule_file reports it as file:line:col."""
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as e:
        line, col = _pos(node)
        problem = getattr(e, "problem", None) or f"{type(e).__name__}: {e}"
        raise _BadScalar(line, col, f"invalid value (tag {excerpt(node.tag, 60)}): {excerpt(problem, 80)}") from None


def _mapping_items(node, sink: Sink, what: str):
    """(key_str, key_node, value_node) of a mapping node, reporting duplicate keys."""
    seen = {}
    for k, v in node.value:
        key = k.value if isinstance(k, yaml.ScalarNode) else None
        if key is None:
            sink.error(*_pos(k), f"{what}: keys must be strings")
            continue
        if key in seen:
            sink.error(*_pos(k), f"{what}: duplicate key {excerpt(key)} (first at line {seen[key]})")
            continue
        seen[key] = k.start_mark.line + 1
        yield key, k, v


def _const_value(loader, node, sink: Sink, name: str):
    def scalar(n):
        if not isinstance(n, yaml.ScalarNode):
            sink.error(*_pos(n), f"constant {name}: items must be numbers or strings")
            return None
        v = _scalar(loader, n)
        if v is None or not isinstance(v, (bool, int, float, str)):
            sink.error(*_pos(n), f"constant {name}: unsupported value {excerpt(n.value)} (numbers, strings, lists of them)")
            return None
        if isinstance(v, float) and not math.isfinite(v):
            sink.error(*_pos(n), f"constant {name}: value must be finite, got {v!r}")
            return None
        return v
    if isinstance(node, yaml.SequenceNode):
        if not node.value:
            sink.error(*_pos(node), f"constant {name}: list must not be empty")
            return None
        if len(node.value) > MAX_CONST_ITEMS:
            sink.error(*_pos(node), f"constant {name}: at most {MAX_CONST_ITEMS} items, got {len(node.value)}")
            return None
        items = [scalar(n) for n in node.value]
        if any(x is None for x in items):
            return None
        if len({isinstance(x, str) for x in items}) > 1:
            sink.error(*_pos(node), f"constant {name}: mixes strings and numbers")
            return None
        return tuple(items)
    return scalar(node)


def _rule(loader, src: str, path: str, node, sink: Sink, constants: dict) -> RuleSource | None:
    if not isinstance(node, yaml.MappingNode):
        sink.error(*_pos(node), "each rule must be a mapping with id, when, action")
        return None
    items = {}
    for key, knode, vnode in _mapping_items(node, sink, "rule"):
        items[key] = (knode, vnode)
    rid = ""
    if "id" in items:
        rid_node = items["id"][1]
        rid = rid_node.value if isinstance(rid_node, yaml.ScalarNode) else ""
        if not RULE_ID_RE.match(str(rid)):
            sink.error(*_pos(rid_node), f"rule id {excerpt(rid)} must match [a-z0-9_]+ (at most 64 characters)")
            rid = ""
    else:
        sink.error(*_pos(node), "rule has no id")
    rs = sink.for_rule(rid)
    ok = bool(rid)
    for key, (knode, _) in items.items():
        if key not in _RULE_KEYS:
            rs.error(*_pos(knode), f"unknown key {excerpt(key)} (allowed: {', '.join(_RULE_KEYS)})")
            ok = False

    def get(key, types, default, required=False):
        nonlocal ok
        if key not in items:
            if required:
                rs.error(*_pos(node), f"missing key {excerpt(key)}")
                ok = False
            return default
        vnode = items[key][1]
        v = _scalar(loader, vnode) if isinstance(vnode, yaml.ScalarNode) else None
        if v is None or isinstance(v, bool) and bool not in types or not isinstance(v, types):
            rs.error(*_pos(vnode), f"{key} must be {' or '.join(t.__name__ for t in types)}, got {excerpt(vnode.value) if isinstance(vnode, yaml.ScalarNode) else 'a collection'}")
            ok = False
            return default
        return v

    when = get("when", (str,), "", required=True)
    action = get("action", (str,), "allow")
    if action not in ACTION_NAMES:
        rs.error(*_pos(items["action"][1]), f"action must be one of {', '.join(ACTION_NAMES)}, got {excerpt(action)}")
        ok = False
    score = get("score", (int, float), 0)
    if not math.isfinite(score) or abs(score) > 1e12:
        rs.error(*_pos(items["score"][1]), f"score must be finite and |score| <= 1e12, got {score!r}")
        ok = False
    reason = get("reason", (str,), "")
    mode = get("mode", (str,), "enforce")
    if mode not in ("enforce", "shadow"):
        rs.error(*_pos(items["mode"][1]), f"mode must be enforce or shadow, got {excerpt(mode)}")
        ok = False
    enabled = get("enabled", (bool,), True)
    block_ttl_ms = _block_source(loader, items["block_source"][1], rs) if "block_source" in items else 0
    if not ok or block_ttl_ms < 0:
        return None
    wnode = items["when"][1]
    line, col = _pos(node)
    return RuleSource(path, rid, when, _position_map(src, wnode), int(Action[action.upper()]),
                      float(score), reason, mode, enabled, line, col, constants, block_ttl_ms)


def parse_ttl_ms(v) -> int | None:
    """``10m``, ``2s``, ``1h``, ``500ms`` or an integer of seconds -> milliseconds; None
    when it is none of those or outside BLOCK_TTL_MIN_MS..BLOCK_TTL_MAX_MS."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        ms = v * 1000
    elif isinstance(v, str) and (m := _TTL_RE.match(v)):
        ms = int(m.group(1)) * _TTL_UNIT_MS[m.group(2)]
    else:
        return None
    return ms if BLOCK_TTL_MIN_MS <= ms <= BLOCK_TTL_MAX_MS else None


def _block_source(loader, node, rs: Sink) -> int:
    """``block_source: {ttl: 10m}`` -> the ttl in ms; -1 after reporting what is wrong."""
    if not isinstance(node, yaml.MappingNode):
        rs.error(*_pos(node), "block_source must be a mapping {ttl: DURATION}, e.g. {ttl: 10m}")
        return -1
    items = {k: v for k, _, v in _mapping_items(node, rs, "block_source")}
    bad = [k for k in items if k != "ttl"]
    if bad or "ttl" not in items:
        rs.error(*_pos(node), f"block_source takes exactly one key, ttl (got {', '.join(map(excerpt, items)) or 'none'})")
        return -1
    vnode = items["ttl"]
    v = _scalar(loader, vnode) if isinstance(vnode, yaml.ScalarNode) else None
    ms = parse_ttl_ms(v)
    if ms is None:
        rs.error(*_pos(vnode), f"block_source.ttl must be a duration like 30s, 10m, 1h (or seconds) "
                               f"from {BLOCK_TTL_MIN_MS // 1000}s to {BLOCK_TTL_MAX_MS // 3_600_000}h, "
                               f"got {excerpt(vnode.value) if isinstance(vnode, yaml.ScalarNode) else 'a collection'}")
        return -1
    return ms


MAX_RULE_FILE_BYTES = 4 << 20      # PyYAML parses ~1 MB/s here: bounds compile time and memory


def load_rule_file(path: str, sink: Sink, text: str | None = None) -> RuleFile | None:
    """Parse one rule file; problems go to ``sink``; None when the file is unusable. Only a
    regular file of at most MAX_RULE_FILE_BYTES is read (shm.runtime.textfile: a FIFO or
    /dev/zero is refused, never waited on); a 50 MB file took minutes to parse. ``text``:
    the file's content as already read (a worker compiles the bytes the supervisor
    published); ``path`` then only names it in rule locations and diagnostics."""
    try:
        return _load_rule_file(path, sink, text)
    except _BadScalar as e:
        sink.error(*e.args)
        return None
    except RecursionError:
        sink.error(0, 0, "YAML nested too deeply")
        return None


def _load_rule_file(path: str, sink: Sink, src: str | None) -> RuleFile | None:
    if src is not None and len(src.encode()) > MAX_RULE_FILE_BYTES:
        sink.error(0, 0, f"rule file text is over the limit of {MAX_RULE_FILE_BYTES} bytes")
        return None
    try:
        src = read_text_file(path, MAX_RULE_FILE_BYTES, "rule file") if src is None else src
    except TextFileError as e:
        sink.error(0, 0, str(e).removeprefix(f"{path}: "))
        return None
    loader = yaml.SafeLoader(src)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        sink.error(line, col, f"invalid YAML: {excerpt(getattr(e, 'problem', None) or type(e).__name__, 80)}")
        return None
    finally:
        loader.dispose()
    if not isinstance(root, yaml.MappingNode):
        sink.error(1, 1, "a rule file is a mapping with ruleset, version, constants, rules")
        return None
    top = {k: (kn, vn) for k, kn, vn in _mapping_items(root, sink, "rule file")}
    for k, (kn, _) in top.items():
        if k not in _TOP_KEYS:
            sink.error(*_pos(kn), f"unknown key {excerpt(k)} (allowed: {', '.join(_TOP_KEYS)})")
    name, version = "", 0
    if "ruleset" not in top:
        sink.error(1, 1, "missing key 'ruleset'")
    else:
        n = top["ruleset"][1]
        name = str(_scalar(loader, n)) if isinstance(n, yaml.ScalarNode) else ""
        if not RULESET_RE.match(name):
            sink.error(*_pos(n), f"ruleset must match [A-Za-z0-9_.-]+, got {excerpt(n.value if isinstance(n, yaml.ScalarNode) else n.tag)}")
    if "version" not in top:
        sink.error(1, 1, "missing key 'version'")
    else:
        n = top["version"][1]
        v = _scalar(loader, n) if isinstance(n, yaml.ScalarNode) else None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
            sink.error(*_pos(n), f"version must be an integer >= 0, got {excerpt(n.value if isinstance(n, yaml.ScalarNode) else n.tag)}")
        else:
            version = v
    constants = {}
    if "constants" in top:
        cnode = top["constants"][1]
        if isinstance(cnode, yaml.MappingNode):
            for key, kn, vn in _mapping_items(cnode, sink, "constants"):
                if not CONST_RE.match(key) or key.startswith("__"):
                    sink.error(*_pos(kn), f"constant name {excerpt(key)} must be an identifier (no dunder)")
                    continue
                val = _const_value(loader, vn, sink, key)
                if val is not None:
                    constants[key] = ConstantDef(key, val, *_pos(kn))
        elif not (isinstance(cnode, yaml.ScalarNode) and cnode.value in ("", "~", "null")):
            sink.error(*_pos(cnode), "constants must be a mapping NAME: value")
    rules = []
    if "rules" not in top:
        sink.error(1, 1, "missing key 'rules'")
    else:
        rnode = top["rules"][1]
        if not isinstance(rnode, yaml.SequenceNode):
            sink.error(*_pos(rnode), "rules must be a list")
        else:
            for item in rnode.value:
                r = _rule(loader, src, path, item, sink, constants)
                if r is not None:
                    rules.append(r)
    return RuleFile(path, name, version, constants, rules)
