"""What a PromQL expression selects: series names, label matchers and grouping labels.

A small lexer, enough for the expressions this repository ships (alerts, dashboard); promtool
checks the full grammar. Grafana variables (``$instance``, ``$__rate_interval``) pass through.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(\s*\()?")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}


@dataclass
class Selected:
    names: set[str] = field(default_factory=set)                 # series names selected
    matchers: list[tuple[str | None, str, str, str]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)              # labels in by/on/...

    def matchers_of(self, name: str) -> list[tuple[str, str, str]]:
        return [(k, op, v) for n, k, op, v in self.matchers if n == name]


def parse(expr: str) -> Selected:
    """Raises ValueError on a selector body this lexer cannot read (so nothing is missed)."""
    out = Selected()
    for m in _SELECTOR.finditer(expr):
        name, body = m.group(1), m.group(2)
        pos = 0
        while pos < len(body.rstrip()):
            mm = _MATCHER.match(body, pos)
            if mm is None:
                raise ValueError(f"cannot read matchers {body!r} in {expr!r}")
            out.matchers.append((name, mm.group(1), mm.group(2), mm.group(3)))
            pos = mm.end()
    rest = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", expr)
    rest = _RANGE.sub(" ", rest)
    for m in _GROUPING.finditer(rest):
        out.grouping |= {s.strip() for s in m.group(2).split(",") if s.strip()}
    rest = _STRING.sub(" ", _GROUPING.sub(" ", rest))     # `sum by (x) (` reads as a call
    for m in _IDENT.finditer(rest):
        if m.group(2) is None and m.group(1).lower() not in KEYWORDS:
            out.names.add(m.group(1))
    for name, *_ in out.matchers:
        if name is None:
            raise ValueError(f"a selector without a metric name in {expr!r}")
    return out
