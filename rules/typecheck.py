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

from shm.schema import FieldSpec
from rules import ir
from rules.loader import ConstantDef
from rules.parse import ExprError, MAX_DEPTH
from rules.symbols import INT64_MAX, INT64_MIN, ExtSet, ExtValue, Symbols, field_type

_BIN = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
        ast.Mod: "%", ast.Pow: "**"}
_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
        ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in"}
NUMERIC = ("bool", "int", "u64", "wide", "float")


def _describe(n: ir.Node) -> str:
    if isinstance(n, ir.Field):
        return f"{n.spec.type} field {n.name}"
    if n.type == "bytes":
        return "bytes"
    return n.type


class Checker:
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

    # --- comparisons --------------------------------------------------------------------
    def bytes_operand(self, node, n: ir.Node, other: ir.Node, other_node) -> ir.Node:
        """Make ``n`` a bytes operand next to the bytes operand ``other``."""
        if n.type == "str":
            return self.err(node, f"str literal {n.value!r} compared with {_describe(other)}: write b{n.value!r}")
        if n.type == "strconst":
            try:
                raw = n.value.value.encode("ascii")
            except UnicodeEncodeError:
                return self.err(node, f"constant {n.value.name} is not ASCII; bytes constants must be ASCII")
            return self.check_bytes_len(node, ir.Const("bytes", n.pos, raw, len(raw)), other)
        if n.type == "bytes":
            return self.check_bytes_len(node, n, other)
        if n.type == "err":
            return n
        return self.err(node, f"cannot compare {_describe(other)} with {_describe(self.value(node, 0)) if n.type in ('list', 'extset') else _describe(n)}")

    def check_bytes_len(self, node, c: ir.Node, other: ir.Node) -> ir.Node:
        if isinstance(c, ir.Const) and isinstance(other, ir.Field) and c.width > other.width:
            return self.err(node, f"b{c.value.decode('latin-1')!r} is longer than {_describe(other)}: it can never match")
        return c

    def v_Compare(self, node, d):
        ops = [_CMP[type(o)] for o in node.ops]
        p = self._p(node)
        if any(o in ("in", "not in") for o in ops):
            if len(ops) > 1:
                return self.err(node, "'in' cannot be chained with other comparisons")
            return self.membership(node, node.left, node.comparators[0], ops[0] == "not in", d)
        asts = [node.left] + list(node.comparators)
        raw = [self.visit(a, d) for a in asts]
        is_bytes = [r.type == "bytes" and not isinstance(r, ir.Const) for r in raw]
        out = list(raw)
        bad = False
        for i, (a, b) in enumerate(zip(raw, raw[1:])):
            if "err" in (a.type, b.type):
                bad = True
                continue
            if is_bytes[i] or is_bytes[i + 1]:
                if ops[i] not in ("==", "!="):
                    self.err(node, f"bytes support only == != in and not in, got {ops[i]}")
                    bad = True
                    continue
                fld, fnode = (a, asts[i]) if is_bytes[i] else (b, asts[i + 1])
                for j in (i, i + 1):
                    if not is_bytes[j]:
                        out[j] = self.bytes_operand(asts[j], raw[j], fld, fnode)
                        bad |= out[j].type == "err"
                continue
            if a.type == "bytes" or b.type == "bytes":
                self.err(node, "compare bytes literals with a bytes field")
                bad = True
                continue
            for j in (i, i + 1):
                if raw[j].type not in NUMERIC and out[j] is raw[j]:
                    out[j] = self.value(asts[j], d) if raw[j].type in ("str", "strconst", "list", "extset") else raw[j]
                    bad = True
        if bad:
            return ir.Node("err", p)
        out = [self.to_int(o) if o.type == "bool" else o for o in out]
        for j, o in enumerate(out):     # an exact int literal next to a float compares as float
            near = out[max(j - 1, 0):j + 2]
            if isinstance(o, ir.Const) and o.type == "int" and abs(o.value) <= 2**53 \
                    and any(x.type == "float" for x in near):
                out[j] = ir.Const("float", o.pos, float(o.value))
        return ir.Cmp("bool", p, ops, out)

    def membership(self, node, left_ast, right_ast, negate: bool, d) -> ir.Node:
        p = self._p(node)
        x = self.value(left_ast, d)
        if x.type == "err":
            return x
        if x.type not in NUMERIC + ("bytes",):
            return self.err(left_ast, f"'in' needs a number or bytes on the left, got {_describe(x)}")
        if isinstance(right_ast, (ast.Tuple, ast.Set)):
            items = []
            for e in right_ast.elts:
                if isinstance(e, ast.Constant):
                    items.append((e, self.visit(e, d)))
                elif isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub) and isinstance(e.operand, ast.Constant) \
                        and isinstance(e.operand.value, (int, float)) and not isinstance(e.operand.value, bool):
                    items.append((e, self.visit(e, d)))
                elif isinstance(e, ast.Name) and isinstance(self.sym.resolve(e.id), ConstantDef) \
                        and not isinstance(self.sym.resolve(e.id).value, tuple):
                    items.append((e, self.visit(e, d)))
                else:
                    return self.err(e, "tuple/set items after 'in' must be literals or scalar constants")
            if not items:
                return self.err(right_ast, "empty tuple/set after 'in'")
        elif isinstance(right_ast, ast.Name):
            r = self.visit(right_ast, d)
            if r.type == "err":
                return r
            if r.type == "extset":
                s = r.value
                want = "bytes" if x.type == "bytes" else "int"
                if s.element_type != want or x.type == "float":
                    return self.err(right_ast, f"list {right_ast.id} holds {s.element_type}, not {_describe(x)}")
                if x.type == "bytes" and not getattr(s, "accepts_width", lambda w: True)(x.width):
                    return self.err(right_ast, f"list {right_ast.id} ({s.kind}) and {_describe(x)}: both must be "
                                               "at most 8 bytes or both longer (keys are packed vs hashed)")
                return ir.In("bool", p, x if x.type == "bytes" else self.to_int(x) if x.type == "bool" else x, (), negate, s)
            if r.type != "list":
                return self.err(right_ast, f"right side of 'in' must be a list constant, a tuple/set of literals or a list; {right_ast.id} is a single value")
            c = r.value
            items = [(right_ast, self.const_item(v, c, right_ast)) for v in c.value]
        else:
            return self.err(right_ast, "right side of 'in' must be a list constant, a tuple/set of literals or a list")
        typed = []
        for e, it in items:
            if it.type == "err":
                return it
            if x.type == "bytes":
                it = self.bytes_operand(e, it, x, left_ast)
                if it.type == "err":
                    return it
            elif it.type not in ("bool", "int", "float"):
                return self.err(e, f"cannot test {_describe(x)} against {'str' if it.type in ('str', 'strconst') else it.type} items")
            typed.append(it)
        if x.type == "bytes":
            typed = [t for t in typed if not isinstance(x, ir.Field) or t.width <= x.width] or typed[:0]
        else:
            typed = [ir.Const("int", t.pos, int(t.value)) if t.type == "bool" else t for t in typed]
            if x.type == "float":
                typed = [ir.Const("float", t.pos, float(t.value)) if t.type == "int" and abs(t.value) <= 2**53
                         else t for t in typed]
            x = self.to_int(x) if x.type == "bool" else x
        return ir.In("bool", p, x, tuple(typed), negate)

    def const_item(self, v, c: ConstantDef, node) -> ir.Node:
        p = self._p(node)
        if isinstance(v, bool):
            return ir.Const("bool", p, v)
        if isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                return self.err(node, f"constant {c.name} item {v} is outside the int64 range")
            return ir.Const("int", p, v)
        if isinstance(v, float):
            return ir.Const("float", p, v)
        return ir.Const("strconst", p, ConstantDef(c.name, v, c.line, c.col))

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
