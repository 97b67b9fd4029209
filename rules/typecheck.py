"""Pass 3: type-check an allowlisted ``ast`` expression against the schema into typed IR.

Numbers follow Python: bool is an int, int op float promotes to float, ``/`` gives a
float, int ** negative-constant gives a float. Integers are int64; a u64 field compares
exactly with anything numeric and is converted to int64 (checked) for arithmetic. Bytes
fields compare (== != in) only with bytes literals, bytes constants or other bytes
fields; a str literal there is an error that suggests the b"..." form, while a YAML str
constant becomes bytes. Errors are collected (ExprError) and the bad subtree gets type
'err' so one mistake does not cascade.
"""
from __future__ import annotations

import ast
import difflib

from rules import ir
from rules.loader import ConstantDef
from rules.parse import ExprError, MAX_DEPTH
from rules.symbols import INT64_MAX, INT64_MIN, ExtSet, ExtValue, Symbols, field_type
from rules.typecheck_compare import NUMERIC, CompareChecks, _describe
from shm.schema import FieldSpec

_BIN = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
        ast.Mod: "%", ast.Pow: "**"}


class Checker(CompareChecks):
    def __init__(self, symbols: Symbols):
        self.sym = symbols
        self.errors: list[ExprError] = []

    # --- helpers ----------------------------------------------------------------------
    def err(self, node: ast.AST, msg: str) -> ir.Node:
        self.errors.append(ExprError(node.lineno, node.col_offset, msg))
        return ir.Node("err", (node.lineno, node.col_offset))

    def _p(self, node) -> tuple:
        return (node.lineno, node.col_offset)

    def to_int(self, n: ir.Node) -> ir.Node:
        if n.type == "int":
            return n
        if isinstance(n, ir.Const) and n.type == "bool":
            return ir.Const("int", n.pos, int(n.value))
        return ir.Conv("int", n.pos, n)

    def to_float(self, n: ir.Node) -> ir.Node:
        if n.type == "float":
            return n
        if isinstance(n, ir.Const):
            return ir.Const("float", n.pos, float(n.value))
        return ir.Conv("float", n.pos, n)

    def to_exact(self, n: ir.Node, t: str) -> ir.Node:
        """``n`` (bool/int/u64/wide) as 'u64' or 'wide': never fails, never changes the value."""
        if n.type == t:
            return n
        if isinstance(n, ir.Const):
            return ir.Const(t, n.pos, int(n.value))
        return ir.Conv(t, n.pos, n)

    def numeric(self, node: ast.AST, n: ir.Node, what: str) -> bool:
        if n.type == "err":
            return False
        if n.type not in NUMERIC:
            self.err(node, f"{what} needs a number, got {_describe(n)}")
            return False
        return True

    def common(self, nodes: list[ir.Node], allow_bool: bool) -> tuple[str, list[ir.Node]]:
        """Operand type of arithmetic: u64 and wide values are converted to int (checked)."""
        types = {n.type for n in nodes}
        if allow_bool and types == {"bool"}:
            return "bool", nodes
        if "float" in types:
            return "float", [self.to_float(n) for n in nodes]
        return "int", [self.to_int(n) for n in nodes]

    def chosen(self, nodes: list[ir.Node]) -> tuple[str, list[ir.Node]]:
        """Type of a value chosen among ``nodes`` (if-else, and/or, min/max): no arithmetic,
        so a u64 operand keeps its exact value. All unsigned (bools and non-negative
        literals included) -> u64; u64 next to a signed int -> wide (any value of either)."""
        types = {n.type for n in nodes}
        if not types & {"u64", "wide"} or "float" in types:
            return self.common(nodes, allow_bool=True)
        signed = any(n.type == "wide" or n.type == "int" and not (isinstance(n, ir.Const) and n.value >= 0)
                     for n in nodes)
        t = "wide" if signed else "u64"
        return t, [self.to_exact(n, t) for n in nodes]

    def truth(self, node: ast.AST, n: ir.Node) -> ir.Node:
        if n.type == "err":
            return n
        if n.type == "bool":
            return n
        if n.type in NUMERIC:
            return ir.Truth("bool", n.pos, n)
        return self.err(node, f"{_describe(n)} has no truth value in rules; compare it (e.g. != b'')")

    # --- entry ------------------------------------------------------------------------
    def condition(self, node: ast.expr) -> ir.Node:
        return self.truth(node, self.visit(node))

    def visit(self, node: ast.expr, depth: int = 0) -> ir.Node:
        if depth > MAX_DEPTH * 2:       # defensive; parse.check_depth already limits
            return self.err(node, f"expression nests deeper than {MAX_DEPTH} levels")
        m = getattr(self, "v_" + type(node).__name__, None)
        if m is None:
            return self.err(node, f"{type(node).__name__} is not allowed")
        return m(node, depth + 1)

    # --- leaves -----------------------------------------------------------------------
    def v_Constant(self, node, d):
        v = node.value
        p = self._p(node)
        if isinstance(v, bool):
            return ir.Const("bool", p, v)
        if isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                return self.err(node, f"integer literal {v} is outside the int64 range")
            return ir.Const("int", p, v)
        if isinstance(v, float):
            return ir.Const("float", p, v)
        if isinstance(v, bytes):
            if len(v) > 64:
                return self.err(node, f"bytes literal is {len(v)} bytes long (fields hold at most 64)")
            if v.endswith(b"\x00"):
                return self.err(node, "bytes literal ends with \\x00: fields are zero-padded, trailing zeros never compare equal")
            return ir.Const("bytes", p, v, len(v))
        if isinstance(v, str):
            return ir.Const("str", p, v)     # only legal next to a bytes operand (see bytes_operand)
        return self.err(node, f"literal {v!r} is not allowed")

    def v_Name(self, node, d):
        s = self.sym.resolve(node.id)
        p = self._p(node)
        if s is None:
            close = difflib.get_close_matches(node.id, self.sym.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return self.err(node, f"unknown name {node.id!r} (not a field, constant, feature or list){hint}")
        if isinstance(s, FieldSpec):
            return ir.Field(field_type(s), p, s.name, s, s.size if s.kind == "bytes" else 0)
        if isinstance(s, ConstantDef):
            v = s.value
            if isinstance(v, tuple):
                return ir.Const("list", p, s)
            if isinstance(v, bool):
                return ir.Const("bool", p, v)
            if isinstance(v, int):
                if not INT64_MIN <= v <= INT64_MAX:
                    return self.err(node, f"constant {node.id} = {v} is outside the int64 range")
                return ir.Const("int", p, v)
            if isinstance(v, float):
                return ir.Const("float", p, v)
            return ir.Const("strconst", p, s)
        if isinstance(s, ExtValue):
            return ir.Ext(s.type, p, s)
        if isinstance(s, ExtSet):
            return ir.Const("extset", p, s)
        return self.err(node, f"name {node.id!r} cannot be used here")

    def value(self, node, d) -> ir.Node:
        """visit + reject names that are only legal in special positions."""
        n = self.visit(node, d)
        if n.type == "list":
            return self.err(node, f"constant {n.value.name} is a list: use it as 'x in {n.value.name}'")
        if n.type == "extset":
            return self.err(node, f"{node.id} is a list: use it as 'x in {node.id}'")
        if n.type == "strconst":
            return self.err(node, f"constant {n.value.name} is a string: compare it with a bytes field")
        if n.type == "str":
            return self.err(node, f"str literal {n.value!r} is not allowed; bytes fields compare with b{n.value!r}")
        return n

    # --- operators --------------------------------------------------------------------
    def v_BinOp(self, node, d):
        op = _BIN[type(node.op)]
        a, b = self.value(node.left, d), self.value(node.right, d)
        ok = self.numeric(node.left, a, f"operator {op}") & self.numeric(node.right, b, f"operator {op}")
        if not ok:
            return ir.Node("err", self._p(node))
        p = self._p(node)
        if op == "/":
            t, (a, b) = ("float", (self.to_float(a), self.to_float(b))) if "float" in (a.type, b.type) \
                else ("int", (self.to_int(a), self.to_int(b)))
            return ir.Bin("float", p, "/", a, b)
        if op == "**" and "float" not in (a.type, b.type) and isinstance(b, ir.Const) and b.value < 0:
            return ir.Bin("float", p, "**", self.to_float(a), self.to_float(b))
        t, (a, b) = self.common([a, b], allow_bool=False)
        return ir.Bin(t, p, op, a, b)

    def v_UnaryOp(self, node, d):
        p = self._p(node)
        if isinstance(node.op, ast.Not):
            x = self.value(node.operand, d)
            t = self.truth(node.operand, x)
            return t if t.type == "err" else ir.Unary("bool", p, "not", t)
        if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
                and type(node.operand.value) in (int, float):
            v = -node.operand.value           # a negative literal: -9223372036854775808 fits
            if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
                return self.err(node, f"integer literal {v} is outside the int64 range")
            return ir.Const(type(v).__name__, p, v)
        x = self.value(node.operand, d)
        if not self.numeric(node.operand, x, "unary " + ("-" if isinstance(node.op, ast.USub) else "+")):
            return ir.Node("err", p)
        if isinstance(node.op, ast.UAdd):
            return self.to_int(x) if x.type == "bool" else x
        x = x if x.type == "float" else self.to_int(x)
        return ir.Unary(x.type, p, "-", x)

    def v_BoolOp(self, node, d):
        vals = [self.value(v, d) for v in node.values]
        bad = False
        for v, a in zip(vals, node.values):
            if v.type == "err":
                bad = True
            elif v.type not in NUMERIC:
                self.err(a, f"{_describe(v)} has no truth value in rules; compare it (e.g. != b'')")
                bad = True
        if bad:
            return ir.Node("err", self._p(node))
        t, vals = self.chosen(vals)
        return ir.BoolOp(t, self._p(node), "and" if isinstance(node.op, ast.And) else "or", vals)

    def v_IfExp(self, node, d):
        cond = self.truth(node.test, self.value(node.test, d))
        a, b = self.value(node.body, d), self.value(node.orelse, d)
        ok = self.numeric(node.body, a, "if-else branch") & self.numeric(node.orelse, b, "if-else branch")
        if not ok or cond.type == "err":
            return ir.Node("err", self._p(node))
        t, (a, b) = self.chosen([a, b])
        return ir.IfExp(t, self._p(node), cond, a, b)

    # --- calls --------------------------------------------------------------------------
    def v_Call(self, node, d):
        fn = node.func.id
        p = self._p(node)
        n = len(node.args)
        if fn == "between":
            if n != 3:
                return self.err(node, f"between(x, lo, hi) takes 3 arguments, got {n}")
            x, lo, hi = node.args
            fake = ast.Compare(left=lo, ops=[ast.LtE(), ast.LtE()], comparators=[x, hi])
            ast.copy_location(fake, node)
            return self.v_Compare(fake, d)
        if fn in ("abs", "round") and n != 1:
            return self.err(node, f"{fn}() takes exactly one argument in rules, got {n}")
        if fn in ("min", "max") and n < 2:
            return self.err(node, f"{fn}() needs at least two arguments, got {n}")
        args = [self.value(a, d) for a in node.args]
        ok = True
        for a, an in zip(args, node.args):
            ok &= self.numeric(an, a, f"{fn}()")
        if not ok:
            return ir.Node("err", p)
        if fn == "abs":
            x = args[0]
            if x.type == "u64":
                return x                  # already its own absolute value
            x = x if x.type in ("float", "wide") else self.to_int(x)
            return ir.Call(x.type, p, "abs", [x])
        if fn == "round":
            x = args[0]
            if x.type == "float":
                return ir.Call("int", p, "round", [x])
            return self.to_int(x) if x.type == "bool" else x     # round(int) is the int itself
        t, args = self.chosen(args)
        if t == "bool":
            t, args = "int", [self.to_int(a) for a in args]     # min(True, False) is an int
        return ir.Call(t, p, fn, args)

    def v_Tuple(self, node, d):
        return self.err(node, "tuples are only allowed after 'in'")

    def v_Set(self, node, d):
        return self.err(node, "sets are only allowed after 'in'")


def typecheck(tree: ast.expr, symbols: Symbols) -> tuple[ir.Node, list[ExprError]]:
    """Typed IR of a rule condition (type 'bool') and the errors found."""
    c = Checker(symbols)
    node = c.condition(tree)
    return node, sorted(c.errors, key=lambda e: (e.lineno, e.col))
