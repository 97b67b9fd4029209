"""Pass 5: generate the Python source of ONE fused @njit kernel for a whole ruleset.

Input: the folded, typed IR of every enabled rule plus its index, action, score and mode.
Output: module source text (no rule text is ever executed: the source is built only from
the checked IR, names are schema field names and generated temporaries, literals are
re-printed with ``repr``). Rules are grouped by bitmap word (CHUNK_RULES rules) into
column loops over a block of events (stateless rules: rules/kernel_columns.py) and chunk
functions called per event (rules reading features), so compile time grows linearly and
fired rule indexes come out ascending.

Kernel contract (see rules/__init__.py): kernel(events, arrival_ns, out, bits, hits, errors, *ext).
"""
from __future__ import annotations

import math

from shm.types import MAX_FIRED, DecisionFlag
from rules import ir
from rules.symbols import INT64_MIN

CHUNK_RULES = 64              # one chunk per bitmap word (must divide 64)
BSEARCH_MIN_ITEMS = 33          # below: a branchless == chain beats binary search
# applied to a -1/0/1/2 (unordered: nan) code; written so that 2 never satisfies <, <=, >, >=
_CMP_CODE = {"<": "({}) == -1", "<=": "-1 <= ({}) <= 0", ">": "({}) == 1", ">=": "0 <= ({}) <= 1",
             "==": "({}) == 0", "!=": "({}) != 0"}
_SWAP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def flit(x: float) -> str:
    if math.isnan(x):
        return "np.nan"
    if math.isinf(x):
        return "np.inf" if x > 0 else "(-np.inf)"
    return repr(float(x))


def ilit(x: int) -> str:
    return "(-9223372036854775807 - 1)" if x == INT64_MIN else repr(int(x))


def chunks_of(value: bytes, width: int) -> list[int]:
    """Little-endian uint64 chunks of ``value`` zero-padded to ``width`` bytes."""
    padded = value.ljust(width, b"\x00")
    return [int.from_bytes(padded[k:k + 8], "little") for k in range(0, width, 8)]


def _int_by_const(m: ir.Bin) -> bool:
    """int // or % by a constant other than 0 and -1: never fails, and LLVM turns the
    division into multiplications and shifts."""
    return m.op in ("//", "%") and m.a.type == "int" and isinstance(m.b, ir.Const) \
        and m.b.value not in (0, -1)


def pure(n: ir.Node, int_by_const: bool = True) -> bool:
    """True when evaluating ``n`` can never fail: then short-circuit operators may evaluate
    every operand and combine with & | (no branches to mispredict, same result).
    ``int_by_const=False`` counts int // and % by a constant as impure too: per event, the
    short-circuit that skips them is cheaper than evaluating them (straight-line code in a
    vector loop wants them pure)."""
    for m in ir.walk(n):
        if isinstance(m, ir.Bin) and (m.a.type == "int" or m.op in ("/", "//", "%", "**")) \
                and not (int_by_const and _int_by_const(m)):
            return False
        if isinstance(m, ir.Conv) and m.x.type in ("u64", "wide") and m.type == "int":
            return False
        if isinstance(m, ir.Unary) and m.op == "-" and m.type == "int":
            return False
        if isinstance(m, ir.Call) and (m.fn == "round" or m.fn == "abs" and m.type == "int"):
            return False
        if isinstance(m, (ir.Ext, ir.In)) and getattr(m, "symbol", None) is not None \
                and not getattr(m.symbol, "pure", False):     # features: locals, never fail
            return False
    return True


_EXACT_MIXED = ({"u64", "float"}, {"wide", "float"})     # exact comparisons through a call


def reads_state(n: ir.Node) -> bool:
    """True when ``n`` reads a feature, list, state or other extension symbol: its rule is
    evaluated per event, in event order, between the feature reads and updates."""
    return any(getattr(m, "symbol", None) is not None for m in ir.walk(n))


def vector_ops(n: ir.Node) -> bool:
    """True when every operation of ``n`` is cheap arithmetic over the event's fields, so a
    loop evaluating it for a whole block may vectorize (if its code also has no branch:
    RuleEmitter.branches): it reads no feature, list or state (those are read per event, in
    order), and has no operation whose speculation costs more than the per-event code's
    short-circuit skips: division or modulo (float / and int // or % by a constant
    excepted), integer * and ** (their overflow checks divide), round, exact u64/float
    comparisons, big-set searches."""
    for m in ir.walk(n):
        if getattr(m, "symbol", None) is not None:
            return False
        if isinstance(m, ir.Bin) and m.op in ("*", "/", "//", "%", "**") and not _int_by_const(m) \
                and not (m.a.type == "float" and m.op in ("*", "/")):
            return False
        if isinstance(m, ir.Call) and m.fn == "round":
            return False
        pairs = []
        if isinstance(m, ir.Cmp):
            pairs = list(zip(m.operands, m.operands[1:]))
        elif isinstance(m, ir.In):
            if len(m.items) >= BSEARCH_MIN_ITEMS:
                return False
            pairs = [(m.x, c) for c in m.items]
        elif isinstance(m, ir.Call):
            pairs = [(a, b) for a in m.args for b in m.args]
        if any({a.type, b.type} in _EXACT_MIXED for a, b in pairs):
            return False
    return True


class RuleEmitter:
    """Emits statements for one rule's IR into ``lines`` (indented), temps ``v{r}_{k}``."""

    def __init__(self, rid: int, fields: dict, consts: dict, straight: bool = False):
        self.rid = rid
        self.straight = straight      # code for a vector loop: int // and % by a constant are pure
        self.k = 0
        self.can_fail = False         # set when a statement may fail (needs the e flag)
        self.branches = False         # set when a statement is conditional (an if)
        self.lines: list[str] = []
        self.fields = fields          # field name -> spec, records the loads needed
        self.consts = consts          # global name -> (dtype, sorted values) for big sets

    def tmp(self) -> str:
        self.k += 1
        return f"v{self.rid}_{self.k}"

    def emit(self, ind: int, s: str) -> None:
        self.branches |= s.startswith(("if ", "else", "elif "))
        self.lines.append("    " * ind + s)

    def fail(self, ind: int, call: str) -> str:
        t = self.tmp()
        self.can_fail = True
        self.emit(ind, f"{t}, x{t} = {call}")
        self.emit(ind, f"e{self.rid} |= x{t}")
        return t

    def bytes_chunks(self, n: ir.Node, width: int) -> list[str]:
        if isinstance(n, ir.Const):
            return [hex(c) for c in chunks_of(n.value, width)]
        self.fields[n.name] = n.spec
        k = (n.width + 7) // 8
        return [f"b_{n.name}_{j}" if j < k else "0" for j in range((width + 7) // 8)]

    def expr(self, n: ir.Node, ind: int) -> str:
        if isinstance(n, ir.Const):
            if n.type == "float":
                return flit(n.value)
            if n.type == "bool":
                return "True" if n.value else "False"
            if n.type == "u64":
                return f"np.uint64({int(n.value)})"
            if n.type == "wide":
                return f"_w_u(np.uint64({int(n.value)}))" if n.value > 0 else f"_w_i({ilit(n.value)})"
            return ilit(n.value)
        if isinstance(n, ir.Field):
            self.fields[n.name] = n.spec
            return f"f_{n.name}"
        if isinstance(n, ir.Ext):
            return "(" + n.symbol.kernel_load("ev", "i") + ")"
        if isinstance(n, ir.Conv):
            x = self.expr(n.x, ind)
            if n.type == "float":
                return f"_w_to_f({x})" if n.x.type == "wide" else f"np.float64({x})"
            if n.type == "u64":
                return f"np.uint64({x})"                # from bool
            if n.type == "wide":
                return f"_w_u({x})" if n.x.type == "u64" else f"_w_i({x})"
            if n.x.type == "u64":
                return self.fail(ind, f"_u64_to_i({x})")
            if n.x.type == "wide":
                return self.fail(ind, f"_w_to_i({x})")
            return f"np.int64({x})"
        if isinstance(n, ir.Truth):
            x = self.expr(n.x, ind)
            if n.x.type == "wide":
                return f"({x}[0] != 0)"                 # big implies non-zero
            zero = "0.0" if n.x.type == "float" else ("False" if n.x.type == "bool" else "0")
            return f"({x} != {zero})"
        if isinstance(n, ir.Unary):
            x = self.expr(n.x, ind)
            if n.op == "not":
                return f"(not {x})"
            if n.type == "int":
                return self.fail(ind, f"_neg_i({x})")
            return f"(-{x})"
        if isinstance(n, ir.Bin):
            return self.binop(n, ind)
        if isinstance(n, ir.Cmp):
            return self.compare(n, ind)
        if isinstance(n, ir.In):
            return self.member(n, ind)
        if isinstance(n, ir.BoolOp):
            if n.type == "bool" and pure(n, self.straight):
                op = " & " if n.op == "and" else " | "
                return "(" + op.join(self.expr(v, ind) for v in n.values) + ")"
            t = self.tmp()
            self.emit(ind, f"{t} = {self.expr(n.values[0], ind)}")
            depth = ind
            truth = f"{t}[0] != 0" if n.type == "wide" else t     # a tuple is always true
            for v in n.values[1:]:
                self.emit(depth, f"if {'' if n.op == 'and' else 'not '}({truth}):")
                depth += 1
                self.emit(depth, f"{t} = {self.expr(v, depth)}")
            return t
        if isinstance(n, ir.IfExp):
            t = self.tmp()
            c = self.expr(n.cond, ind)
            self.emit(ind, f"if {c}:")
            self.emit(ind + 1, f"{t} = {self.expr(n.a, ind + 1)}")
            self.emit(ind, "else:")
            self.emit(ind + 1, f"{t} = {self.expr(n.b, ind + 1)}")
            return t
        if isinstance(n, ir.Call):
            args = [self.expr(a, ind) for a in n.args]
            if n.fn == "abs":
                if n.type == "wide":
                    return f"_abs_w({args[0]})"
                return self.fail(ind, f"_abs_i({args[0]})") if n.type == "int" else f"abs({args[0]})"
            if n.fn == "round":
                return self.fail(ind, f"_round_f({args[0]})")
            t = self.tmp()
            args = [self.simple(a, ind) for a in args]
            self.emit(ind, f"{t} = {args[0]}")
            op = "<" if n.fn == "min" else ">"
            for a in args[1:]:
                self.emit(ind, f"if {self.cmp2(op, a, n, t, n)}:")
                self.emit(ind + 1, f"{t} = {a}")
            return t
        raise ValueError(f"codegen: unexpected node {type(n).__name__}")

    def binop(self, n: ir.Bin, ind: int) -> str:
        a = self.expr(n.a, ind)
        b = self.expr(n.b, ind)
        if n.a.type == "int":
            name = {"+": "_add_ii", "-": "_sub_ii", "*": "_mul_ii", "/": "_truediv_ii",
                    "//": "_floordiv_ii", "%": "_mod_ii", "**": "_pow_ii"}[n.op]
            return self.fail(ind, f"{name}({a}, {b})")
        if n.op in ("+", "-", "*"):
            return f"({a} {n.op} {b})"
        name = {"/": "_div_ff", "//": "_floordiv_ff", "%": "_mod_ff", "**": "_pow_ff"}[n.op]
        return self.fail(ind, f"{name}({a}, {b})")

    def cmp2(self, op: str, a: str, ta: ir.Node, b: str, tb: ir.Node) -> str:
        if ta.type == "bytes":
            w = max(getattr(ta, "width", 0), getattr(tb, "width", 0))
            ca, cb = self.bytes_chunks(ta, w), self.bytes_chunks(tb, w)
            eq = " and ".join(f"{x} == {y}" for x, y in zip(ca, cb))
            return f"({eq})" if op == "==" else f"(not ({eq}))"
        kinds = (ta.type, tb.type)
        if kinds in (("int", "int"), ("float", "float"), ("u64", "u64")):
            return f"({a} {op} {b})"
        if "wide" in kinds:
            other = kinds[1] if kinds[0] == "wide" else kinds[0]
            fn = {"int": "_cmp_wi", "u64": "_cmp_wu", "float": "_cmp_wf", "wide": "_cmp_ww"}[other]
            if kinds[0] == "wide":
                return "(" + _CMP_CODE[op].format(f"{fn}({a}, {b})") + ")"
            return "(" + _CMP_CODE[_SWAP[op]].format(f"{fn}({b}, {a})") + ")"
        if kinds == ("int", "float"):
            return "(" + _CMP_CODE[op].format(f"_cmp_if({a}, {b})") + ")"
        if kinds == ("float", "int"):
            return "(" + _CMP_CODE[_SWAP[op]].format(f"_cmp_if({b}, {a})") + ")"
        if kinds == ("u64", "float"):
            return "(" + _CMP_CODE[op].format(f"_cmp_uf({a}, {b})") + ")"
        if kinds == ("float", "u64"):
            return "(" + _CMP_CODE[_SWAP[op]].format(f"_cmp_uf({b}, {a})") + ")"
        if kinds == ("u64", "int"):
            return "(" + _CMP_CODE[op].format(f"_cmp_ui({a}, {b})") + ")"
        if kinds == ("int", "u64"):
            return "(" + _CMP_CODE[_SWAP[op]].format(f"_cmp_ui({b}, {a})") + ")"
        raise ValueError(f"codegen: cannot compare {kinds}")

    def operand(self, n: ir.Node, ind: int) -> str:
        return "" if n.type == "bytes" else self.expr(n, ind)

    def simple(self, code: str, ind: int) -> str:
        """``code`` as a name or literal, so it can be used twice without recomputing."""
        if code.startswith(("v", "f_", "b_")) and code.replace("_", "").isalnum() or \
                code.lstrip("-").replace(".", "").replace("e", "").isdigit():
            return code
        t = self.tmp()
        self.emit(ind, f"{t} = {code}")
        return t

    def compare(self, n: ir.Cmp, ind: int) -> str:
        if len(n.ops) == 1:
            a = self.operand(n.operands[0], ind)
            b = self.operand(n.operands[1], ind)
            return self.cmp2(n.ops[0], a, n.operands[0], b, n.operands[1])
        if pure(n, self.straight):
            codes = [self.operand(o, ind) for o in n.operands]
            codes = [c if j in (0, len(codes) - 1) or not c else self.simple(c, ind) for j, c in enumerate(codes)]
            return "(" + " & ".join(self.cmp2(op, codes[j], n.operands[j], codes[j + 1], n.operands[j + 1])
                                    for j, op in enumerate(n.ops)) + ")"
        t = self.tmp()
        prev = self.operand(n.operands[0], ind)
        depth = ind
        for j, op in enumerate(n.ops):
            right = self.operand(n.operands[j + 1], depth)
            if right and j + 1 < len(n.ops):
                right = self.simple(right, depth)
            self.emit(depth, f"{t} = {self.cmp2(op, prev, n.operands[j], right, n.operands[j + 1])}")
            if j + 1 < len(n.ops):
                self.emit(depth, f"if {t}:")
                depth += 1
            prev = right
        return t

    def member(self, n: ir.In, ind: int) -> str:
        t = self.tmp()
        neg = "not " if n.negate else ""
        if n.symbol is not None:
            if n.x.type == "bytes":
                code = n.symbol.kernel_contains_bytes(n.x)
            else:
                x = self.simple(self.operand(n.x, ind), ind)
                code = n.symbol.kernel_contains(f"{x}[0]" if n.x.type == "wide" else x)
                guard = _list_range_guard(getattr(n.symbol, "kind", ""), n.x.type, x)
                code = f"{guard} and {code}" if guard else code
            self.emit(ind, f"{t} = {neg}({code})")
            return t
        items = list(n.items)
        if not items:
            self.emit(ind, f"{t} = {'True' if n.negate else 'False'}")
            return t
        x = self.operand(n.x, ind)
        if n.x.type == "bytes" and n.x.width <= 8 and len(items) >= BSEARCH_MIN_ITEMS:
            vals = sorted({chunks_of(c.value, n.x.width)[0] for c in items})
            g = f"_S{self.rid}_{len(self.consts)}"
            self.consts[g] = ("np.uint64", vals)
            self.fields[n.x.name] = n.x.spec
            self.emit(ind, f"{t} = {neg}_in_sorted_u(b_{n.x.name}_0, {g})")
            return t
        if n.x.type in ("int", "u64") and len(items) >= BSEARCH_MIN_ITEMS \
                and all(c.type == "int" for c in items):
            vals = sorted({c.value for c in items if n.x.type == "int" or c.value >= 0})
            g = f"_S{self.rid}_{len(self.consts)}"
            if n.x.type == "int":
                self.consts[g] = ("np.int64", vals)
                self.emit(ind, f"{t} = {neg}_in_sorted_i({x}, {g})")
            else:
                self.consts[g] = ("np.uint64", vals)
                self.emit(ind, f"{t} = {neg}_in_sorted_u({x}, {g})")
            return t
        if n.x.type != "bytes" and len(items) > 1:
            x = self.simple(x, ind)
        terms = [self.cmp2("==", x, n.x, self.expr(c, ind) if c.type != "bytes" else "", c) for c in items]
        return f"({neg}({' | '.join(terms)}))"


def _list_range_guard(list_type: str, x_type: str, x: str) -> str:
    """Keys are the value's 64 bits, so -1 and 2**64-1 share one: a value outside the list's
    type can never be in it (Python: 2**64-1 is not in [-1])."""
    if list_type == "i64" and x_type == "u64":
        return f"({x} <= np.uint64({2**63 - 1}))"
    if list_type == "i64" and x_type == "wide":
        return f"(not {x}[1])"
    if list_type in ("u64", "u32", "ipv4") and x_type == "int":
        return f"({x} >= 0)"
    if list_type in ("u64", "u32", "ipv4") and x_type == "wide":
        return f"({x}[1] or {x}[0] >= 0)"
    return ""


def field_loads(fields: dict, schema) -> list[str]:
    out = []
    for name in sorted(fields, key=lambda k: schema.names.index(k)):
        s = fields[name]
        off = schema.dtype.fields[name][1]
        if s.kind == "bytes":
            for j in range((s.size + 7) // 8):
                out.append(f"b_{name}_{j} = _ldb(ev, {off + 8 * j}, {min(8, s.size - 8 * j)})")
        elif s.kind == "float":
            out.append(f"f_{name} = np.float64(ev.{name})")
        elif s.kind == "bool" or s.type == "u64":
            out.append(f"f_{name} = ev.{name}")
        else:
            out.append(f"f_{name} = np.int64(ev.{name})")
    return out
