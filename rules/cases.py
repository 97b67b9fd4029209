"""Rule test cases (``risk-engine test-rules``): event -> expected action, score, fired rules.

Case file format (YAML)::

    defaults: {account_id: 1, currency: USD}     # merged under every event (optional)
    cases:
      - name: big_payment_from_ng
        event: {amount: 20000, country: NG}
        expect:
          action: block            # allow | review | block (optional)
          score: 100               # optional, compared with 1e-9 relative tolerance
          fired: [sanctioned_country, huge_amount]   # optional: the exact set (enforce+shadow)
          fired_includes: [...]    # optional: at least these
          not_fired: [...]         # optional: none of these

Fields missing from an event are 0 / empty; bytes fields take ASCII strings, ipv4 fields a
dotted address or an integer.

History, features, lists and state (issue 4): every case starts from EMPTY feature tables
(lists from their files, every account ACTIVE, no global halt), then optionally::

      - name: fifth_payment_in_a_minute
        history:                       # earlier events, evaluated in order (decided too)
          - {event: {account_id: 7}, at_ms: 1000, repeat: 4, every_ms: 1000}
        at_ms: 5000                    # arrival time of the case's event (default: 1 ms after
                                       # the last history event, else 0)
        state: {account_state: {7: HALTED}}   # ACTIVE | REDUCING | HALTED
        global_halt: true
        lists: {blocked_ips: ["10.0.0.1"]}    # replaces a list's content for this case
        event: {account_id: 7}
        expect: {action: block}        # checked on the case's event only
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import yaml

from shm.ipv4 import parse_ipv4
from shm.types import ACTION_NAMES

_EXPECT_KEYS = ("action", "score", "fired", "fired_includes", "not_fired")


class CaseFileError(ValueError):
    """The case file itself is malformed (message names the case and key)."""


@dataclass
class Case:
    name: str
    event: dict
    expect: dict = field(default_factory=dict)
    history: list = field(default_factory=list)    # [(event dict, at_ms)], expanded
    at_ms: int | None = None
    state: dict = field(default_factory=dict)      # name -> {key: state name}
    global_halt: bool = False
    lists: dict = field(default_factory=dict)      # name -> [value text]

    @property
    def stateful(self) -> bool:
        return bool(self.history or self.state or self.global_halt or self.lists)

    def arrival_ms(self) -> list[int]:
        """Arrival ms of every history event then of the case's event."""
        ts = [t for _, t in self.history]
        last = self.at_ms if self.at_ms is not None else (ts[-1] + 1 if ts else 0)
        return ts + [last]


_CASE_KEYS = {"name", "event", "expect", "history", "at_ms", "state", "global_halt", "lists"}


def _history(path: str, name: str, raw, defaults: dict) -> list:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CaseFileError(f"{path}: case {name}: history must be a list")
    out = []
    t = 0
    for k, h in enumerate(raw):
        if not isinstance(h, dict) or not isinstance(h.get("event", {}), dict) \
                or set(h) - {"event", "at_ms", "repeat", "every_ms"}:
            raise CaseFileError(f"{path}: case {name}: history #{k + 1}: expected "
                                "{event: {...}, at_ms: N, repeat: N, every_ms: N}")
        try:
            t = int(h.get("at_ms", t))
            n, step = int(h.get("repeat", 1)), int(h.get("every_ms", 0))
        except (TypeError, ValueError) as e:
            raise CaseFileError(f"{path}: case {name}: history #{k + 1}: {e}") from None
        if not 1 <= n <= 100_000 or t < 0 or step < 0:
            raise CaseFileError(f"{path}: case {name}: history #{k + 1}: repeat={n} at_ms={t} every_ms={step}")
        ev = {**defaults, **(h.get("event") or {})}
        for j in range(n):
            out.append((ev, t + j * step))
        t += (n - 1) * step
    return out


def load_cases(path: str) -> list[Case]:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not isinstance(raw.get("cases"), list):
        raise CaseFileError(f"{path}: expected a mapping with a 'cases' list")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise CaseFileError(f"{path}: defaults must be a mapping")
    out = []
    for k, c in enumerate(raw["cases"]):
        if not isinstance(c, dict) or "name" not in c or not isinstance(c.get("event", {}), dict):
            raise CaseFileError(f"{path}: case #{k + 1}: needs name, event (mapping), expect")
        exp = c.get("expect") or {}
        bad = [x for x in exp if x not in _EXPECT_KEYS]
        if bad:
            raise CaseFileError(f"{path}: case {c['name']}: unknown expect key {bad[0]!r} (allowed: {', '.join(_EXPECT_KEYS)})")
        if "action" in exp and exp["action"] not in ACTION_NAMES:
            raise CaseFileError(f"{path}: case {c['name']}: expect.action={exp['action']!r} (allowed: {', '.join(ACTION_NAMES)})")
        bad = sorted(set(c) - _CASE_KEYS)
        if bad:
            raise CaseFileError(f"{path}: case {c['name']}: unknown key {bad[0]!r} (allowed: {', '.join(sorted(_CASE_KEYS))})")
        for key in ("state", "lists"):
            if not isinstance(c.get(key) or {}, dict):
                raise CaseFileError(f"{path}: case {c['name']}: {key} must be a mapping")
        out.append(Case(str(c["name"]), {**defaults, **(c.get("event") or {})}, exp,
                        _history(path, str(c["name"]), c.get("history"), defaults),
                        None if c.get("at_ms") is None else int(c["at_ms"]), dict(c.get("state") or {}),
                        bool(c.get("global_halt", False)), dict(c.get("lists") or {})))
    return out


def build_events(cases: list[Case], schema, events: list[dict] | None = None) -> np.ndarray:
    """One record per case (its event), or per mapping of ``events`` (named after cases[0])."""
    names = set(schema.names)
    items = [(c, c.event) for c in cases] if events is None else [(cases[0], e) for e in events]
    ev = np.zeros(len(items), schema.dtype)
    for i, (c, event) in enumerate(items):
        for k, v in event.items():
            if k not in names:
                raise CaseFileError(f"case {c.name}: unknown field {k!r}")
            spec = schema.field(k)
            if spec.kind == "bytes":
                v = v.encode("ascii") if isinstance(v, str) else bytes(v)
                if len(v) > spec.size:
                    raise CaseFileError(f"case {c.name}: {k}={v!r} longer than {spec.type}")
            elif spec.type == "ipv4" and isinstance(v, str):
                try:
                    v = parse_ipv4(v)
                except ValueError as e:
                    raise CaseFileError(f"case {c.name}: {k}: {e}") from None
            try:
                ev[i][k] = v
            except (TypeError, ValueError, OverflowError) as e:
                raise CaseFileError(f"case {c.name}: {k}={v!r}: {e}") from None
    return ev


def check_case(c: Case, action: int, score: float, fired: set, ids: tuple, ref) -> list[str]:
    """Problems of one case (empty: pass). ``ref`` is the reference (action, score, fired)."""
    problems = []
    names = {ids[k] for k in fired}
    e = c.expect
    if "action" in e and ACTION_NAMES[action] != e["action"]:
        problems.append(f"action: expected {e['action']}, got {ACTION_NAMES[action]}")
    if "score" in e and not math.isclose(score, float(e["score"]), rel_tol=1e-9, abs_tol=1e-9):
        problems.append(f"score: expected {e['score']}, got {score:g}")
    for key in ("fired", "fired_includes", "not_fired"):
        for rid in e.get(key) or []:
            if rid not in ids:
                problems.append(f"{key}: unknown rule id {rid!r}")
    if "fired" in e:
        want = set(e["fired"] or [])
        if want != names:
            miss, extra = sorted(want - names), sorted(names - want)
            problems.append("fired: " + "; ".join(x for x in (
                f"missing {', '.join(miss)}" if miss else "", f"unexpected {', '.join(extra)}" if extra else "") if x))
    miss = sorted(set(e.get("fired_includes") or []) - names)
    if miss:
        problems.append(f"fired_includes: missing {', '.join(miss)}")
    bad = sorted(set(e.get("not_fired") or []) & names)
    if bad:
        problems.append(f"not_fired: fired {', '.join(bad)}")
    if ref != (action, score, frozenset(fired)):
        problems.append(f"kernel {(action, score, sorted(fired))} != reference {(ref[0], ref[1], sorted(ref[2]))}")
    return problems
