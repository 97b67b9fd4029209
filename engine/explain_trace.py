"""What the rules saw (engine.explain): every feature, state and halt value read for the event
with the kernel's own primitives, and each rule's condition traced clause by clause by the
reference evaluator."""
from __future__ import annotations

import numpy as np

from rules import ir
from rules.feature_model import FeatureModel
from rules.reference import _CMP, EvalError, evaluate
from shm.features import distinct, scalar, windows
from shm.features import state as state_table   # `state` is the evaluator's state below
from shm.features.keys import _key_pair, key_from_python
from shm.features.lists import list_values
from shm.features.table import MAX_TIME_MS


def read_values(fs, event, arrival_ns: int) -> dict:
    """Every feature, state and the halt as the kernel reads them for ``event`` (a record of
    the schema dtype) on ``fs``'s tables now, with the kernel's own njit primitives."""
    schema = fs.schema

    def enc(name) -> np.uint64:
        v = event[name]
        f = schema.field(name)
        return np.uint64(key_from_python(bytes(v) if f.kind == "bytes" else int(v), f.type))

    specs = {s.name: s for s in fs.specs.features}
    states = {s.name: s for s in fs.specs.states}
    out = {}
    for name, b in fs.bindings.items():
        if b.what == "halt":
            out[name] = bool(state_table._halt_get(fs.array(b.arg)))
            continue
        if b.what == "list":
            continue
        consts = [int(c) for c in b.consts.split(", ")]
        arr = fs.array(b.arg)
        if b.what == "state":
            out[name] = int(state_table._read_state(arr, *consts, enc(states[name].key)))
            continue
        f = specs[name]
        keys = [enc(k) for k in f.key]
        key = keys[0] if len(keys) == 1 else np.uint64(_key_pair(keys[0], keys[1]))   # numba returns a Python int
        t = arrival_ns // 1_000_000 if f.time == "arrival" else int(np.int64(event[f.time]))
        now = min(max(0, t), MAX_TIME_MS)
        if f.kind in ("age", "last"):
            v = getattr(scalar, f"_read_{f.kind}")(arr, *consts, key, now)
        else:
            value = 0.0 if f.of is None else (enc(f.of) if f.kind == "distinct" else float(event[f.of]))
            v = getattr(distinct if f.kind == "distinct" else windows, f"_read_{f.kind}")(arr, *consts, key, now, value)
        out[name] = int(v) if b.expr_type == "int" else float(v)
    return out


class SeenState:
    """The reference evaluator's state (value / contains) for one event: the values read from
    the tables, and list membership with rules.feature_model's semantics over the lists'
    current contents."""

    def __init__(self, fs, values: dict):
        self.values = values
        self.lists = {ls.name: list_values(fs.array(f"fl_{ls.name}")) for ls in fs.specs.lists}
        self._model = FeatureModel(fs.specs, fs.schema, list_values=self.lists)

    def value(self, name: str):
        return self.values[name]

    def contains(self, name: str, x) -> bool:
        return self._model.contains(name, x)


# --- tracing a condition -------------------------------------------------------------------

def source(n) -> str:
    """The expression of an IR node as text (conversions implicit, as written)."""
    if isinstance(n, ir.Const):
        return repr(n.value)
    if isinstance(n, ir.Field):
        return n.name
    if isinstance(n, ir.Ext):
        return n.symbol.name
    if isinstance(n, (ir.Conv, ir.Truth)):
        return source(n.x)
    if isinstance(n, ir.Unary):
        return f"not {source(n.x)}" if n.op == "not" else f"-{source(n.x)}"
    if isinstance(n, ir.Bin):
        return f"({source(n.a)} {n.op} {source(n.b)})"
    if isinstance(n, ir.Cmp):
        parts = [source(n.operands[0])]
        for op, o in zip(n.ops, n.operands[1:]):
            parts += [op, source(o)]
        return " ".join(parts)
    if isinstance(n, ir.In):
        where = n.symbol.name if n.symbol is not None else "(" + ", ".join(repr(c.value) for c in n.items) + ")"
        return f"{source(n.x)} {'not in' if n.negate else 'in'} {where}"
    if isinstance(n, ir.BoolOp):
        return "(" + f" {n.op} ".join(source(v) for v in n.values) + ")"
    if isinstance(n, ir.IfExp):
        return f"({source(n.a)} if {source(n.cond)} else {source(n.b)})"
    if isinstance(n, ir.Call):
        return f"{n.fn}(" + ", ".join(source(a) for a in n.args) + ")"
    return type(n).__name__


def _value(n, env, state):
    """(value, error) of a node by the reference evaluator."""
    try:
        return evaluate(n, env, state), None
    except EvalError as e:
        return None, str(e) or "evaluation error"


def trace(cond, env, state) -> list[dict]:
    """The clauses of a condition in evaluation order: each comparison, membership, boolean
    clause (and, or, not) and conditional, with its value and its operands' values; clauses
    a short-circuit skipped have ``evaluated: False``."""
    out: list[dict] = []

    def clause(n, depth, operands):
        v, err = _value(n, env, state)
        out.append({"depth": depth, "expr": source(n), "value": v, "error": err,
                    "operands": operands, "evaluated": True})
        return v, err

    def skipped(n, depth):
        out.append({"depth": depth, "expr": source(n), "value": None, "error": None,
                    "operands": [], "evaluated": False})

    def walk(n, depth):
        if isinstance(n, (ir.Conv, ir.Truth)):
            return walk(n.x, depth)
        if isinstance(n, ir.BoolOp):
            v, _ = clause(n, depth, [])
            for k, sub in enumerate(n.values):
                sv, err = walk(sub, depth + 1)
                if err is not None or (n.op == "and") != bool(sv):
                    for rest in n.values[k + 1:]:
                        skipped(rest, depth + 1)
                    break
            return v, None
        if isinstance(n, ir.Unary) and n.op == "not":
            v, err = clause(n, depth, [])
            walk(n.x, depth + 1)
            return v, err
        if isinstance(n, ir.Cmp):
            ops = []
            for k, o in enumerate(n.operands):
                ov, oerr = _value(o, env, state)
                ops.append({"expr": source(o), "value": ov, "error": oerr})
                if oerr is not None:
                    break
                if k and not _cmp(n.ops[k - 1], ops[k - 1]["value"], ov):
                    break                              # the chain stops at its first False
            return clause(n, depth, ops)
        if isinstance(n, ir.In):
            xv, xerr = _value(n.x, env, state)
            return clause(n, depth, [{"expr": source(n.x), "value": xv, "error": xerr}])
        if isinstance(n, ir.IfExp):
            v, err = clause(n, depth, [])
            cv, cerr = walk(n.cond, depth + 1)
            if cerr is None:
                walk(n.a if cv else n.b, depth + 1)
                skipped(n.b if cv else n.a, depth + 1)
            return v, err
        return _value(n, env, state)        # arithmetic and plain values: shown as operands

    v, err = walk(cond, 0)
    if not out or out[0]["depth"] != 0 or out[0]["expr"] != source(cond):
        out.insert(0, {"depth": 0, "expr": source(cond), "value": v, "error": err,
                       "operands": [], "evaluated": True})
    return out


def _cmp(op, a, b) -> bool:
    return _CMP[op](a, b)
