"""Pass 3, comparisons: chains of == != < <= > >=, bytes operands (literals, constants,
fields of one width) and ``in`` / ``not in`` over sets, lists and constants. Mixed into
rules.typecheck.Checker, whose helpers (err, _p, visit, numeric, common) these call.

Next to an ipv4 field a str literal is an address (``ip == "10.0.0.1"``, ``ip in ("10.0.0.1",
"10.0.0.2")``) and ``ip in "10.0.0.0/8"`` tests a CIDR block (a range compare), both
parsed strictly by shm.ipv4 at build time."""
from __future__ import annotations

import ast

from rules import ir
from rules.loader import ConstantDef
from rules.symbols import INT64_MAX, INT64_MIN
from shm.ipv4 import parse_cidr, parse_ipv4

_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
        ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in"}
NUMERIC = ("bool", "int", "u64", "wide", "float")


def _describe(n: ir.Node) -> str:
    if isinstance(n, ir.Field):
        return f"{n.spec.type} field {n.name}"
    if n.type == "bytes":
        return "bytes"
    return n.type


def _is_ipv4(n: ir.Node) -> bool:
    return isinstance(n, ir.Field) and n.spec.type == "ipv4"


class CompareChecks:
    def address(self, node, n: ir.Node, field: ir.Node) -> ir.Node:
        """A str literal next to an ipv4 field: the address's u32 as an int literal."""
        try:
            return ir.Const("int", n.pos, parse_ipv4(n.value))
        except ValueError as e:
            return self.err(node, f"{_describe(field)}: {e}")

    def cidr(self, node, x: ir.Node, text: str, negate: bool) -> ir.Node:
        """``x in "a.b.c.d/n"``: first <= x <= last of the block."""
        p = self._p(node)
        try:
            lo, hi = parse_cidr(text)
        except ValueError as e:
            return self.err(node, f"{_describe(x)}: {e}")
        c = ir.Cmp("bool", p, ["<=", "<="], [ir.Const("int", p, lo), x, ir.Const("int", p, hi)])
        return ir.Unary("bool", p, "not", c) if negate else c

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
        for j, r in enumerate(raw):
            near = raw[max(j - 1, 0):j + 2]
            if r.type == "str" and isinstance(r, ir.Const) and any(map(_is_ipv4, near)):
                raw[j] = self.address(asts[j], r, next(filter(_is_ipv4, near)))
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
        if _is_ipv4(x) and isinstance(right_ast, ast.Constant) and isinstance(right_ast.value, str):
            return self.cidr(right_ast, x, right_ast.value, negate)
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
                if getattr(s, "kind", "") in ("cidr4", "cidr6"):    # prefixes: the kernel's tries match them, the kernels' exact search cannot
                    return self.err(right_ast, f"list {right_ast.id} is a {s.kind} list: it is enforced in the kernel "
                                               "(enforce:), not testable in a rule")
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
            if it.type == "str" and _is_ipv4(x):
                it = self.address(e, it, x)
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
