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

Fields missing from an event are 0 / empty; bytes fields take ASCII strings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import yaml

from engine.types import ACTION_NAMES

_EXPECT_KEYS = ("action", "score", "fired", "fired_includes", "not_fired")


class CaseFileError(ValueError):
    """The case file itself is malformed (message names the case and key)."""


@dataclass
class Case:
    name: str
    event: dict
    expect: dict = field(default_factory=dict)


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
        out.append(Case(str(c["name"]), {**defaults, **(c.get("event") or {})}, exp))
    return out


def build_events(cases: list[Case], schema) -> np.ndarray:
    ev = np.zeros(len(cases), schema.dtype)
    names = set(schema.names)
    for i, c in enumerate(cases):
        for k, v in c.event.items():
            if k not in names:
                raise CaseFileError(f"case {c.name}: unknown field {k!r}")
            spec = schema.field(k)
            if spec.kind == "bytes":
                v = v.encode("ascii") if isinstance(v, str) else bytes(v)
                if len(v) > spec.size:
                    raise CaseFileError(f"case {c.name}: {k}={v!r} longer than {spec.type}")
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
