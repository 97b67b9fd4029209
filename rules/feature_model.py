"""Brute-force Python model of features, lists, state and halt: the reference evaluator's
state (the oracle for kernels compiled with features). No tables, no buckets in memory:
every committed (epoch, value) is kept per key and each read recomputes from the list,
following docs/FEATURES.md "Semantics" (window (E - buckets, E] with E = max(head, epoch),
late events dropped beyond the window, age = first seen, last = the value before).
Keys are the tuple of the key fields' Python values (exact: no eviction, no hashing), so
tests must size tables so that nothing is evicted.

    m = FeatureModel(specs, schema)
    m.begin(env, arrival_ms)               # reads of this event (include the event)
    d = rs.reference_decision(env, m)      # rules read m.value(name) / m.contains(name, x)
    m.commit(env, arrival_ms, d.action)    # updates (unless_blocked skips BLOCK)
"""
from __future__ import annotations

import math

import numpy as np

from rules.reference import event_env
from shm.features.hll import _hll_add_many, _hll_estimate
from shm.features.keys import key_from_python
from shm.features.lists import load_list_file
from shm.features.table import MAX_TIME_MS
from shm.types import Action

_AGG = {"count": len, "sum": sum, "min": min, "max": max, "avg": lambda x: sum(x) / len(x)}


def _hll(values: list[int], p: int) -> int:
    regs = np.zeros(1 << p, np.uint8)
    _hll_add_many(regs, p, np.array(values, dtype=np.uint64))
    return int(round(float(_hll_estimate(regs))))


class FeatureModel:
    def __init__(self, specs, schema, list_values: dict | None = None):
        self.specs, self.schema = specs, schema
        self.lists = {}
        self.list_types = {}
        for ls in specs.lists:
            vals = (list_values or {}).get(ls.name)
            if vals is None:
                vals = load_list_file(ls.file, ls.type) if ls.file else []
            self.lists[ls.name] = {int(v) for v in vals}
            self.list_types[ls.name] = ls.type
        self.state_key = {s.name: s.key for s in specs.states}
        self.states: dict = {s.name: {} for s in specs.states}
        self.halt = False
        self.hist: dict = {f.name: {} for f in specs.features}   # key -> [(epoch, value)]
        self.head: dict = {f.name: {} for f in specs.features}
        self.first: dict = {f.name: {} for f in specs.features}  # age
        self.last: dict = {f.name: {} for f in specs.features}   # last: key -> (t, value)
        self._vals: dict = {}

    # --- admin ------------------------------------------------------------------------
    def set_state(self, name: str, key, state: int) -> None:
        self.states[name][key] = state

    def replace_list(self, name: str, values) -> None:
        self.lists[name] = {int(v) for v in values}

    # --- the reference evaluator's interface ----------------------------------------------
    def value(self, name: str):
        return self._vals[name]

    def contains(self, name: str, x) -> bool:
        t = self.list_types[name]
        if isinstance(x, bytes):       # same encoding family as the list (checked at compile)
            k = key_from_python(x, t if len(x) <= int(t[5:]) else f"bytes{len(x)}")
        else:
            lo, hi = {"u32": (0, 2**32 - 1), "ipv4": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "i64": (-2**63, 2**63 - 1)}[t]
            if not lo <= int(x) <= hi:
                return False              # outside the list's type: never a member (as Python)
            k = int(x) & 0xFFFFFFFFFFFFFFFF
        return k in self.lists[name]

    # --- per event --------------------------------------------------------------------
    def _now(self, f, env, arrival_ms: int) -> int:
        """As the kernel: the time as a signed 64-bit integer, clamped to [0, MAX_TIME_MS]."""
        t = arrival_ms if f.time == "arrival" else (int(env[f.time]) + 2**63) % 2**64 - 2**63
        return min(max(0, t), MAX_TIME_MS)

    def _key(self, f, env):
        return tuple(env[k] for k in f.key)

    def _value(self, f, env):
        if f.of is None:
            return 0.0
        if f.kind == "distinct":
            return key_from_python(env[f.of], self.schema.field(f.of).type)
        return float(env[f.of])

    def begin(self, env, arrival_ms: int) -> None:
        """Compute every read of this event (including the event itself)."""
        vals = {"global_halt": self.halt}
        for name, key_field in self.state_key.items():
            vals[name] = self.states[name].get(env[key_field], 0)
        for f in self.specs.features:
            k, t, v = self._key(f, env), self._now(f, env, arrival_ms), self._value(f, env)
            if f.kind == "age":
                vals[f.name] = (t - min(self.first[f.name].get(k, t), t)) // 1000
                continue
            if f.kind == "last":
                vals[f.name] = self.last[f.name].get(k, (0, math.nan))[1]
                continue
            e = t // f.bucket_ms
            eff = max(self.head[f.name].get(k, e), e)
            window = [x for ep, x in self.hist[f.name].get(k, []) if eff - f.nbuckets < ep <= eff]
            if e > eff - f.nbuckets:
                window.append(v)
            if f.kind == "distinct":
                vals[f.name] = _hll(window, f.registers.bit_length() - 1)
            elif f.kind == "count" or window:
                vals[f.name] = _AGG[f.kind](window)
            else:
                vals[f.name] = math.nan
        self._vals = vals

    def commit(self, env, arrival_ms: int, action: int) -> None:
        """Apply the updates of this event after the decision ``action``."""
        for f in self.specs.features:
            if f.update == "unless_blocked" and action == Action.BLOCK:
                continue
            k, t, v = self._key(f, env), self._now(f, env, arrival_ms), self._value(f, env)
            if f.kind == "age":
                self.first[f.name][k] = min(self.first[f.name].get(k, t), t)
            elif f.kind == "last":
                if k not in self.last[f.name] or t >= self.last[f.name][k][0]:
                    self.last[f.name][k] = (t, v)
            else:
                e = t // f.bucket_ms
                head = self.head[f.name].get(k, e)
                if e <= head - f.nbuckets:
                    continue                      # LATE: dropped
                self.head[f.name][k] = max(head, e)
                self.hist[f.name].setdefault(k, []).append((e, v))


def reference_stream(rs, model: FeatureModel, events, arrival_ns) -> list:
    """Decisions of the reference evaluator over ``events`` in order, with ``model``."""
    out = []
    for i in range(len(events)):
        env = event_env(events[i], rs.schema)
        a_ms = int(arrival_ns[i]) // 1_000_000
        model.begin(env, a_ms)
        d = rs.reference_decision(env, model)
        model.commit(env, a_ms, d.action)
        out.append(d)
    return out
