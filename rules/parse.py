"""Passes 1 and 2: parse a ``when`` text with ``ast`` and allowlist every node.

Nothing is ever evaluated: the text is parsed in ``eval`` mode and each node must be of an
allowed kind, else a diagnostic names the construct and its position. Limits are checked
before any recursive walk, so hostile input cannot exhaust the stack:
MAX_EXPR_CHARS characters, MAX_DEPTH levels of nesting, MAX_NODES nodes.
"""
from __future__ import annotations

import ast

MAX_EXPR_CHARS = 4096
MAX_DEPTH = 64
MAX_NODES = 2000
FUNCTIONS = ("abs", "min", "max", "round", "between")

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**"}
_CMPOPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
           ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in"}
_UNARY = {ast.USub: "-", ast.UAdd: "+", ast.Not: "not"}
_REJECT = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Slice: "slices are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Dict: "dict displays are not allowed",
    ast.List: "list displays are not allowed; use a tuple (a, b) or a set {a, b} of literals",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}
_BITOPS = (ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift, ast.MatMult)


class ExprError(Exception):
    """One problem at (lineno, col_offset) of the expression text (ast conventions)."""

    def __init__(self, lineno: int, col: int, message: str):
        super().__init__(message)
        self.lineno, self.col, self.message = lineno, col, message


def parse_expr(text: str) -> ast.expr:
    """Parse ``text`` as one expression; raise ExprError on syntax or size problems."""
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(1, 0, f"expression is {len(text)} characters long (limit {MAX_EXPR_CHARS})")
    if not text.strip():
        raise ExprError(1, 0, "empty expression")
    if "\x00" in text:
        raise ExprError(1, text.index("\x00"), "NUL character in expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        line = e.lineno or 1
        col = (e.offset or 1) - 1
        # SyntaxError.offset counts characters; ExprError uses UTF-8 byte offsets like ast
        lines = text.split("\n")
        if 1 <= line <= len(lines):
            col = len(lines[line - 1][:col].encode())
        return _raise(line, col, f"syntax error: {e.msg}")
    except (RecursionError, MemoryError, ValueError) as e:
        raise ExprError(1, 0, f"expression too complex to parse ({type(e).__name__})") from None
    return tree.body


def _raise(line, col, msg):
    raise ExprError(line, col, msg)


def check_depth(node: ast.AST) -> None:
    """Iterative depth/size check, before anything recursive touches the tree."""
    stack = [(node, 1)]
    count = 0
    while stack:
        n, d = stack.pop()
        count += 1
        if d > MAX_DEPTH:
            raise ExprError(getattr(n, "lineno", 1), getattr(n, "col_offset", 0),
                            f"expression nests deeper than {MAX_DEPTH} levels")
        if count > MAX_NODES:
            raise ExprError(1, 0, f"expression has more than {MAX_NODES} nodes")
        for child in ast.iter_child_nodes(n):   # contexts and operator tokens add no depth
            stack.append((child, d + 1 if isinstance(child, ast.expr) else d))


def allowlist(node: ast.AST) -> list[ExprError]:
    """Every node not on the allowlist, in source order (empty list: the tree is allowed)."""
    errors: list[ExprError] = []
    stack = [node]
    while stack:
        n = stack.pop()
        msg = _check_node(n)
        if msg:
            errors.append(ExprError(n.lineno, n.col_offset, msg))
            continue
        stack.extend(reversed(list(_children(n))))
    errors.sort(key=lambda e: (e.lineno, e.col))
    return errors


def _children(n: ast.AST):
    if isinstance(n, ast.Call):
        return n.args          # func is a checked Name; keywords rejected
    if isinstance(n, (ast.BinOp, ast.BoolOp, ast.UnaryOp, ast.Compare)):
        return [c for c in ast.iter_child_nodes(n) if isinstance(c, ast.expr)]
    return ast.iter_child_nodes(n)


def _check_node(n: ast.AST) -> str | None:
    for t, msg in _REJECT.items():
        if isinstance(n, t):
            return msg
    if isinstance(n, ast.Name):
        if n.id.startswith("__") or n.id.endswith("__"):
            return f"name {n.id!r} is not allowed (dunder names are reserved)"
        return None
    if isinstance(n, ast.Constant):
        v = n.value
        if v is None or v is Ellipsis or isinstance(v, complex):
            return f"literal {v!r} is not allowed (numbers, True/False and b'...' only)"
        return None   # str literals are diagnosed by the type checker (needs context)
    if isinstance(n, ast.BinOp):
        if type(n.op) not in _BINOPS:
            kind = "bitwise operators are" if isinstance(n.op, _BITOPS) else "operator is"
            return f"{kind} not allowed (allowed: + - * / // % **)"
        return None
    if isinstance(n, ast.UnaryOp):
        if type(n.op) not in _UNARY:
            return "operator ~ is not allowed"
        return None
    if isinstance(n, ast.BoolOp):
        return None
    if isinstance(n, ast.Compare):
        for op in n.ops:
            if isinstance(op, (ast.Is, ast.IsNot)):
                return "'is' / 'is not' are not allowed; use == or !="
        return None
    if isinstance(n, ast.Call):
        f = n.func
        if not isinstance(f, ast.Name):
            return "only calls of abs, min, max, round, between are allowed"
        if f.id.startswith("__"):
            return f"name {f.id!r} is not allowed (dunder names are reserved)"
        if f.id not in FUNCTIONS:
            return f"call of {f.id!r} is not allowed (allowed: {', '.join(FUNCTIONS)})"
        if n.keywords:
            return f"{f.id}() takes no keyword arguments"
        if any(isinstance(a, ast.Starred) for a in n.args):
            return "starred arguments are not allowed"
        return None
    if isinstance(n, (ast.IfExp, ast.Tuple, ast.Set, ast.Load)):
        return None
    return f"{type(n).__name__} is not allowed"
