"""Run one rule test case (rules.cases) through the kernel and the reference evaluator.

Every case starts from empty feature tables of the ruleset's FeatureSet specs (fresh
process-local arrays: no case sees another's events), applies the case's state, global
halt and list overrides, then evaluates its history and its event in order in one kernel
call; the reference runs the same stream on rules.feature_model.FeatureModel.
"""
from __future__ import annotations

import numpy as np

from rules.cases import Case, CaseFileError, build_events
from rules.feature_model import FeatureModel, reference_stream
from shm.features.featureset import CONSTANTS, FeatureSet
from shm.features.lists import parse_value


def _fresh_features(rs, c: Case):
    """(FeatureSet, FeatureModel) for one case, or (None, None) without features."""
    if rs.features is None:
        return None, None
    specs, schema = rs.features.specs, rs.schema
    fs = FeatureSet(specs, schema)
    lists = {}
    types = {ls.name: ls.type for ls in specs.lists}
    for name, values in c.lists.items():
        if name not in types or not isinstance(values, list):
            raise CaseFileError(f"case {c.name}: lists.{name}: not a list of this config (or not a YAML list)")
        try:
            vals = [parse_value(str(v), types[name]) for v in values]
        except ValueError as e:
            raise CaseFileError(f"case {c.name}: lists.{name}: {e}") from None
        fs.replace_list(name, vals)     # the list encodes them (a cidr6 value is wider than u64)
        lists[name] = vals
    model = FeatureModel(specs, schema, lists)
    keys = {s.name: s.key for s in specs.states}
    for name, m in c.state.items():
        if name not in keys or not isinstance(m, dict):
            raise CaseFileError(f"case {c.name}: state.{name}: not a state of this config (or not a mapping)")
        for key, st in m.items():
            if st not in CONSTANTS:
                raise CaseFileError(f"case {c.name}: state.{name}.{key}={st!r} (allowed: {', '.join(CONSTANTS)})")
            f = schema.field(keys[name])
            k = key.encode() if f.kind == "bytes" and isinstance(key, str) else key if f.kind == "bytes" else int(key)
            fs.set_state(name, k, CONSTANTS[st])
            model.set_state(name, k, CONSTANTS[st])
    fs.set_halt(c.global_halt)
    model.halt = c.global_halt
    return fs, model


def run_case(rs, c: Case):
    """((action, score, fired set), reference (action, score, fired frozenset)) of the
    case's event, after its history."""
    if c.stateful and rs.features is None:
        raise CaseFileError(f"case {c.name}: history/state/lists need a config with features")
    events = build_events([c], rs.schema, [e for e, _ in c.history] + [c.event])
    arrival = np.array(c.arrival_ms(), np.int64) * 1_000_000
    fs, model = _fresh_features(rs, c)
    out = rs.evaluate(events, arrival_ns=arrival, feature_arrays=fs.arrays() if fs else None)
    last = out[-1]
    nf = int(last["nfired"])
    if model is None:
        ref = rs.reference(events[-1])
    else:
        d = reference_stream(rs, model, events, arrival)[-1]
        ref = (d.action, d.score, d.fired)
    fired = {int(k) for k in last["fired"][:min(nf, len(last["fired"]))]}
    if nf > len(last["fired"]):            # overflowed the slot: use the reference set
        fired = set(ref[2])
    return (int(last["action"]), float(last["score"]), fired), ref
