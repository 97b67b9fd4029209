"""Random well-typed rule expressions over the all-types schema, with a Python twin.

``gen_bool(rng, depth)`` returns (rule_text, python_text): the rule text is what the
compiler sees; the python text is the same expression for Python's own ``eval`` (between
is spelled out as a chained comparison, which is what it means). Numeric subexpressions
carry a kind ('int' or 'float') so min/max/if-else/and/or never mix int and float
(documented: those promote to float in rules, while Python would keep the operand).
"""
from __future__ import annotations

import math
import random

import numpy as np

INT_FIELDS = ["u8f", "u16f", "u32f", "u64f", "i8f", "i16f", "i32f", "i64f", "k"]
FLOAT_FIELDS = ["f32f", "f64f"]
INT_LITS = [0, 1, 2, 3, -1, -7, 100, 255, 65536, 2**31, 2**32 - 1, -2**31, 2**53 + 1, 2**62,
            2**63 - 1, -2**63, 10000]
U64_FIELDS = ["k", "u64f"]
FLOAT_LITS = [0.0, 0.5, -2.5, 3.0, 1e300, -1e300, 1e-300, 2.0**53, 9.2e18, 1.5]
CONSTANTS = {"BIG": 10000, "HALF": 0.5, "K_INTS": (0, 1, -1, 255, 2**40),
             "K_CODES": ("AB", "ZZ", "A")}
CONSTANTS_YAML = ("constants: {BIG: 10000, HALF: 0.5, K_INTS: [0, 1, -1, 255, 1099511627776], "
                  "K_CODES: [\"AB\", \"ZZ\", \"A\"]}")
PY_CONSTANTS = {"BIG": 10000, "HALF": 0.5, "K_INTS": (0, 1, -1, 255, 2**40),
                "K_CODES": (b"AB", b"ZZ", b"A")}


def _lit(v) -> str:
    return repr(v) if v >= 0 else f"({v!r})"


def gen_num(rng: random.Random, depth: int, kind: str | None = None):
    """(rule_text, python_text, kind)."""
    kind = kind or rng.choice(["int", "int", "float"])
    if depth <= 0 or rng.random() < 0.3:
        r = rng.random()
        if kind == "int":
            if r < 0.6:
                f = rng.choice(INT_FIELDS + ["flag"])
                return f, f, "int"
            if r < 0.7:
                return "BIG", "BIG", "int"
            v = _lit(rng.choice(INT_LITS))
            return v, v, "int"
        if r < 0.6:
            f = rng.choice(FLOAT_FIELDS)
            return f, f, "float"
        if r < 0.65:
            return "HALF", "HALF", "float"
        v = _lit(rng.choice(FLOAT_LITS))
        return v, v, "float"
    c = rng.randrange(9)
    if c <= 3:
        op = rng.choice(["+", "-", "*", "/", "//", "%"] if kind == "float" else ["+", "-", "*", "//", "%"])
        if op == "/" and kind == "float":
            a = gen_num(rng, depth - 1)
            b = gen_num(rng, depth - 1)
            return f"({a[0]} / {b[0]})", f"({a[1]} / {b[1]})", "float"
        if kind == "int":
            a, b = gen_num(rng, depth - 1, "int"), gen_num(rng, depth - 1, "int")
        else:
            a, b = gen_num(rng, depth - 1, "float"), gen_num(rng, depth - 1)
            if rng.random() < 0.5:
                a, b = b, a
        return f"({a[0]} {op} {b[0]})", f"({a[1]} {op} {b[1]})", kind
    if c == 4:
        a = gen_num(rng, depth - 1, kind)
        if kind == "int":
            e = rng.choice(["0", "1", "2", "3"])
        else:
            e = rng.choice(["2", "0.5", "(-1)", "3.0", "(-0.5)"])
        return f"({a[0]} ** {e})", f"({a[1]} ** {e})", kind
    if c == 5:
        a = gen_num(rng, depth - 1, kind)
        fn = rng.choice(["abs", "-"])
        if fn == "-":
            return f"(-{a[0]})", f"(-{a[1]})", kind
        return f"abs({a[0]})", f"abs({a[1]})", kind
    if c == 6:
        if kind == "int" and rng.random() < 0.5:
            a = gen_num(rng, depth - 1, "float")
            return f"round({a[0]})", f"round({a[1]})", "int"
        fn = rng.choice(["min", "max"])
        args = [gen_num(rng, depth - 1, kind) for _ in range(rng.choice([2, 2, 3]))]
        return (f"{fn}({', '.join(a[0] for a in args)})", f"{fn}({', '.join(a[1] for a in args)})", kind)
    if c == 7:
        cond = gen_bool(rng, depth - 1)
        a = gen_num(rng, depth - 1, kind)
        b = gen_num(rng, depth - 1, kind)
        return (f"({a[0]} if {cond[0]} else {b[0]})", f"({a[1]} if {cond[1]} else {b[1]})", kind)
    a = gen_num(rng, depth - 1, kind)
    b = gen_num(rng, depth - 1, kind)
    op = rng.choice(["and", "or"])
    return f"({a[0]} {op} {b[0]})", f"({a[1]} {op} {b[1]})", kind


def gen_exact(rng: random.Random, depth: int):
    """(rule_text, python_text, has_u64): an integer expression with no arithmetic (if-else,
    and/or, min/max, abs, round, unary +) over u64 and signed fields, bools and literals.
    Rules must evaluate it exactly, as Python does, with no evaluation error: abs only
    around a u64 operand (abs of a signed int64 can overflow: that is arithmetic)."""
    if depth <= 0 or rng.random() < 0.25:
        r = rng.random()
        if r < 0.4:
            f = rng.choice(U64_FIELDS)
            return f, f, True
        if r < 0.75:
            f = rng.choice(INT_FIELDS + ["flag"])
            return f, f, f in U64_FIELDS
        v = _lit(rng.choice(INT_LITS))
        return v, v, False
    c = rng.randrange(6)
    if c == 0:
        cond = gen_exact_bool(rng, depth - 1)
        a, b = gen_exact(rng, depth - 1), gen_exact(rng, depth - 1)
        return f"({a[0]} if {cond[0]} else {b[0]})", f"({a[1]} if {cond[1]} else {b[1]})", a[2] or b[2]
    if c == 1:
        op = rng.choice(["and", "or"])
        a, b = gen_exact(rng, depth - 1), gen_exact(rng, depth - 1)
        return f"({a[0]} {op} {b[0]})", f"({a[1]} {op} {b[1]})", a[2] or b[2]
    if c <= 3:
        fn = rng.choice(["min", "max"])
        args = [gen_exact(rng, depth - 1) for _ in range(rng.choice([2, 2, 3]))]
        return (f"{fn}({', '.join(a[0] for a in args)})", f"{fn}({', '.join(a[1] for a in args)})",
                any(a[2] for a in args))
    a = gen_exact(rng, depth - 1)
    if c == 4 and a[2]:
        return f"abs({a[0]})", f"abs({a[1]})", True
    fn = rng.choice(["round", "+"])
    return (f"round({a[0]})", f"round({a[1]})", a[2]) if fn == "round" else (f"(+{a[0]})", f"(+{a[1]})", a[2])


def gen_exact_bool(rng: random.Random, depth: int):
    """(rule_text, python_text): a condition over ``gen_exact`` values (comparisons, chains,
    between, in / not in, truth, not, and/or) that must never be an evaluation error."""
    c = rng.randrange(7)
    if c <= 2 or depth <= 0:
        n = rng.choice([1, 1, 2])
        parts = [gen_exact(rng, depth - 1) for _ in range(n + 1)]
        if rng.random() < 0.2:
            parts[rng.randrange(n + 1)] = (lambda v: (v, v, False))(_lit(rng.choice(FLOAT_LITS)))
        ops = [rng.choice(["<", "<=", ">", ">=", "==", "!="]) for _ in range(n)]
        rt = parts[0][0] + "".join(f" {o} {p[0]}" for o, p in zip(ops, parts[1:]))
        pt = parts[0][1] + "".join(f" {o} {p[1]}" for o, p in zip(ops, parts[1:]))
        return f"({rt})", f"({pt})"
    if c == 3:
        x, lo, hi = (gen_exact(rng, depth - 1) for _ in range(3))
        return f"between({x[0]}, {lo[0]}, {hi[0]})", f"({lo[1]} <= {x[1]} <= {hi[1]})"
    if c == 4:
        x = gen_exact(rng, depth - 1)
        items = ", ".join(_lit(v) for v in rng.sample(INT_LITS + [0.5, -2.5, 2.0**63], 3))
        neg = rng.choice(["in", "not in"])
        return f"({x[0]} {neg} ({items}))", f"({x[1]} {neg} ({items}))"
    if c == 5:
        op = rng.choice(["and", "or"])
        a, b = gen_exact_bool(rng, depth - 1), gen_exact_bool(rng, depth - 1)
        return f"({a[0]} {op} {b[0]})", f"({a[1]} {op} {b[1]})"
    a = gen_exact(rng, depth - 1)
    return (f"(not {a[0]})", f"(not {a[1]})") if rng.random() < 0.5 else (a[0], a[1])


def gen_bool(rng: random.Random, depth: int):
    """(rule_text, python_text) of a condition."""
    c = rng.randrange(10)
    if depth <= 0 or c == 0:
        r = rng.random()
        if r < 0.3:
            return "flag", "flag"
        if r < 0.6:
            f, lit = rng.choice([("code", ["b'AB'", "b'A'", "b'ZZZ'", "b''"]),
                                 ("name", ["b'hello'", "b'0123456789'", "b'hello world'"])])
            lit = rng.choice(lit)
            if len(eval(lit)) > (3 if f == "code" else 10):
                lit = "b'A'"
            op = rng.choice(["==", "!="])
            return f"{f} {op} {lit}", f"{f} {op} {lit}"
        if r < 0.8:
            neg = rng.choice(["in", "not in"])
            return f"code {neg} K_CODES", f"code {neg} K_CODES"
        f = rng.choice(INT_FIELDS)
        return f"{f} in K_INTS", f"{f} in K_INTS"
    if c <= 3:
        n = rng.choice([1, 1, 2])
        parts = [gen_num(rng, depth - 1) for _ in range(n + 1)]
        ops = [rng.choice(["<", "<=", ">", ">=", "==", "!="]) for _ in range(n)]
        rt = parts[0][0] + "".join(f" {o} {p[0]}" for o, p in zip(ops, parts[1:]))
        pt = parts[0][1] + "".join(f" {o} {p[1]}" for o, p in zip(ops, parts[1:]))
        return f"({rt})", f"({pt})"
    if c == 4:
        x, lo, hi = (gen_num(rng, depth - 1) for _ in range(3))
        return f"between({x[0]}, {lo[0]}, {hi[0]})", f"({lo[1]} <= {x[1]} <= {hi[1]})"
    if c == 5:
        a = gen_bool(rng, depth - 1)
        return f"(not {a[0]})", f"(not {a[1]})"
    if c <= 7:
        op = rng.choice(["and", "or"])
        a, b = gen_bool(rng, depth - 1), gen_bool(rng, depth - 1)
        return f"({a[0]} {op} {b[0]})", f"({a[1]} {op} {b[1]})"
    if c == 8:
        x = gen_num(rng, depth - 1)
        items = ", ".join(_lit(v) for v in rng.sample(INT_LITS + [0.5, -2.5], 3))
        neg = rng.choice(["in", "not in"])
        return f"({x[0]} {neg} ({items}))", f"({x[1]} {neg} ({items}))"
    a = gen_num(rng, depth - 1)
    return a[0], a[1]      # truthiness of a number


SPECIAL = {                     # every 64-bit edge a type can hold
    "u8": [0, 1, 255], "u16": [0, 1, 65535], "u32": [0, 1, 2**31, 2**32 - 1],
    "u64": [0, 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1], "i8": [0, -1, -128, 127],
    "i16": [0, -1, -32768, 32767], "i32": [0, -1, 1, -2**31, 2**31 - 1],
    "i64": [0, -1, 1, 2**31, -2**31, 2**32 - 1, -2**32 + 1, -2**63, -2**63 + 1, 2**63 - 1, 10000],
    "f32": [0.0, -0.0, 1.5, -2.5, 3.4028234663852886e38, 1e-45, math.inf, math.nan],
    "f64": [0.0, -0.0, 0.5, -2.5, 1e300, -1.7976931348623157e308, 2.0**63, 9007199254740993.0,
            math.inf, -math.inf, math.nan, 10000.0],
}


def random_event(rng: random.Random, schema) -> dict:
    ev = {}
    for f in schema.fields:
        if f.kind == "bytes":
            ev[f.name] = rng.choice([b"", b"AB", b"A", b"ZZ", b"hello", b"0123456789"][: 4 if f.size < 5 else 6])
            if len(ev[f.name]) > f.size:
                ev[f.name] = b"A"
        elif f.kind == "bool":
            ev[f.name] = rng.random() < 0.5
        elif f.kind == "float":
            ev[f.name] = rng.choice(SPECIAL[f.type]) if rng.random() < 0.6 else rng.uniform(-1e4, 1e4)
        else:
            ev[f.name] = rng.choice(SPECIAL[f.type]) if rng.random() < 0.6 else rng.randint(f.lo, f.hi)
    return ev


def to_record(events: list[dict], schema) -> np.ndarray:
    arr = np.zeros(len(events), schema.dtype)
    for i, ev in enumerate(events):
        for k, v in ev.items():
            arr[i][k] = v
    return arr


def python_value(text: str, env: dict):
    """Python's own eval of the python twin; ('raise', exc type) when Python raises."""
    ns = {**PY_CONSTANTS, **env}
    try:
        return ("ok", eval(text, {"__builtins__": {"abs": abs, "min": min, "max": max, "round": round}}, ns))
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as e:
        return ("raise", type(e).__name__)
