"""Pass 4: constant folding of the typed IR.

A subtree whose inputs are all constants is replaced by its value, computed by the
reference evaluator (so folding cannot change semantics). A constant subtree that always
fails (``1 // 0``) is a compile error: ``FoldError`` at its position. Short-circuit
operators and ``if`` with a constant deciding operand are simplified.
"""
from __future__ import annotations

from rules import ir
from rules.reference import EvalError, evaluate


class FoldError(Exception):
    def __init__(self, pos: tuple, message: str):
        super().__init__(message)
        self.pos, self.message = pos, message


def _const(n: ir.Node, like: ir.Node) -> ir.Const:
    v = evaluate(n, {})
    return ir.Const(like.type, like.pos, v, len(v) if isinstance(v, bytes) else 0)


def fold(n: ir.Node) -> ir.Node:
    """Folded copy-in-place of ``n`` (children are replaced; the root may change)."""
    if isinstance(n, (ir.Const, ir.Field, ir.Ext)):
        return n
    for attr in ("x", "a", "b", "cond"):
        if getattr(n, attr, None) is not None and isinstance(getattr(n, attr), ir.Node):
            setattr(n, attr, fold(getattr(n, attr)))
    for attr in ("operands", "values", "args"):
        if isinstance(getattr(n, attr, None), list):
            setattr(n, attr, [fold(c) for c in getattr(n, attr)])
    if isinstance(n, ir.BoolOp):
        vals = []
        for i, v in enumerate(n.values):
            last = i == len(n.values) - 1
            if isinstance(v, ir.Const):
                decides = bool(v.value) != (n.op == "and")
                if decides or last:
                    vals.append(v)
                    break
                continue            # a constant that never decides is skipped
            vals.append(v)
        n.values = vals
        if len(vals) == 1:
            return vals[0]
    if isinstance(n, ir.IfExp) and isinstance(n.cond, ir.Const):
        return n.a if n.cond.value else n.b
    kids = n.children()
    if kids and all(isinstance(k, ir.Const) for k in kids) and not \
            (isinstance(n, ir.In) and n.symbol is not None):
        try:
            return _const(n, n)
        except EvalError as e:
            raise FoldError(n.pos, f"expression always fails: {e}") from None
    return n
