"""The plain-Python evaluator of the typed IR: the oracle the kernel is tested against.

Semantics are Python's, restricted to what the kernel can represent: integers are int64
(an integer result outside int64 is an evaluation error, where Python would grow a big
int), a u64 field used in arithmetic must fit int64, ``int ** int`` with a negative
exponent that is not a literal is an error (Python would return a float). Everything else
that Python raises on (division or modulo by zero, 0.0 ** negative, float ** overflow,
negative ** fraction (complex), round(nan/inf)) is an evaluation error too.
"""
from __future__ import annotations

import math
import operator

from rules import ir
from rules.symbols import INT64_MAX, INT64_MIN


class EvalError(Exception):
    """Evaluating a rule failed (counted as an evaluation error of that rule)."""


def _int(v: int) -> int:
    if not INT64_MIN <= v <= INT64_MAX:
        raise EvalError("integer overflow")
    return v


def binop(op: str, t: str, a, b):
    if t == "int" and op != "/":
        if op == "+":
            return _int(a + b)
        if op == "-":
            return _int(a - b)
        if op == "*":
            return _int(a * b)
        if op in ("//", "%"):
            if b == 0:
                raise EvalError("integer division or modulo by zero")
            return _int(a // b if op == "//" else a % b)
        if op == "**":
            if b < 0:
                raise EvalError("negative integer exponent")
            if abs(a) > 1 and b > 64:
                raise EvalError("integer overflow")
            return _int(a ** b)
    if op == "/":
        if b == 0:
            raise EvalError("division by zero")
        return a / b                     # int / int: Python's correctly rounded division
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op in ("//", "%"):
        if b == 0:
            raise EvalError("float division or modulo by zero")
        return a // b if op == "//" else a % b
    if op == "**":
        try:
            r = a ** b
        except (ZeroDivisionError, OverflowError) as e:
            raise EvalError(str(e)) from None
        if isinstance(r, complex):
            raise EvalError("negative number raised to a fractional power")
        return r
    raise EvalError(f"unknown operator {op}")


_CMP = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


def evaluate(n: ir.Node, env, state=None):
    """Value of ``n`` for the event ``env`` (a mapping field name -> Python value)."""
    if isinstance(n, ir.Const):
        return n.value
    if isinstance(n, ir.Field):
        return env[n.name]
    if isinstance(n, ir.Ext):
        return n.symbol.reference_value(env, state)
    if isinstance(n, ir.Conv):
        v = evaluate(n.x, env, state)
        if n.type == "float":
            return float(v)
        return _int(int(v)) if n.type == "int" else int(v)      # to u64/wide: exact
    if isinstance(n, ir.Truth):
        return bool(evaluate(n.x, env, state))
    if isinstance(n, ir.Unary):
        v = evaluate(n.x, env, state)
        if n.op == "not":
            return not v
        return _int(-v) if n.type == "int" else -v
    if isinstance(n, ir.Bin):
        a = evaluate(n.a, env, state)
        b = evaluate(n.b, env, state)
        return binop(n.op, n.a.type, a, b)
    if isinstance(n, ir.Cmp):
        left = evaluate(n.operands[0], env, state)
        for op, right_node in zip(n.ops, n.operands[1:]):
            right = evaluate(right_node, env, state)
            if not _CMP[op](left, right):
                return False
            left = right
        return True
    if isinstance(n, ir.In):
        x = evaluate(n.x, env, state)
        hit = n.symbol.reference_contains(x, state) if n.symbol is not None \
            else any(x == c.value for c in n.items)
        return hit != n.negate
    if isinstance(n, ir.BoolOp):
        v = None
        for sub in n.values:
            v = evaluate(sub, env, state)
            if (n.op == "and") != bool(v):
                return v
        return v
    if isinstance(n, ir.IfExp):
        return evaluate(n.a if evaluate(n.cond, env, state) else n.b, env, state)
    if isinstance(n, ir.Call):
        args = [evaluate(a, env, state) for a in n.args]
        if n.fn == "abs":
            return _int(abs(args[0])) if n.type == "int" else abs(args[0])
        if n.fn == "round":
            x = args[0]
            if not math.isfinite(x):
                raise EvalError("round() of nan or inf")
            return _int(round(x))
        return min(args) if n.fn == "min" else max(args)
    raise EvalError(f"cannot evaluate {type(n).__name__}")


def event_env(event, schema) -> dict:
    """Python values of a numpy record (or a mapping) for ``evaluate``."""
    env = {}
    for f in schema.fields:
        v = event[f.name]
        if f.kind == "bytes":
            env[f.name] = bytes(v)
        elif f.kind == "float":
            env[f.name] = float(v)
        elif f.kind == "bool":
            env[f.name] = bool(v)
        else:
            env[f.name] = int(v)
    return env
