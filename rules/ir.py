"""The typed intermediate form produced by the type checker and consumed by every later
pass (fold, reference evaluator, code generator).

Types are strings: 'bool', 'int' (int64), 'u64' (a u64 field, compared exactly, converted
to int64 for arithmetic), 'wide' (an integer in [-2**63, 2**64-1]: a value chosen between a
u64 and a signed int by if-else, and/or, min/max, abs; compared exactly, converted to int64
for arithmetic), 'float' (float64), 'bytes' (width in ``Node.width``) and 'err' (a node
that already produced a diagnostic). Operands are explicitly converted (``Conv``)
so every later pass sees same-typed arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    type: str
    pos: tuple = (1, 0)              # (lineno, col_offset) in the expression text

    def children(self) -> list["Node"]:
        return []


@dataclass(eq=False)
class Const(Node):
    value: object = None
    width: int = 0                   # bytes literals: len(value)


@dataclass(eq=False)
class Field(Node):
    name: str = ""
    spec: object = None              # shm.schema.FieldSpec
    width: int = 0                   # bytes fields: N


@dataclass(eq=False)
class Ext(Node):
    """A value provided by an extension symbol (features, account state: issue 4)."""
    symbol: object = None


@dataclass(eq=False)
class Conv(Node):
    """Conversion to ``type`` ('int', 'float', 'u64' from bool, 'wide' from bool/int/u64);
    only u64/wide -> int may fail (a value above 2**63-1)."""
    x: Node = None

    def children(self):
        return [self.x]


@dataclass(eq=False)
class Unary(Node):
    op: str = "-"                    # '-' (int: may overflow) or 'not' (type bool)
    x: Node = None

    def children(self):
        return [self.x]


@dataclass(eq=False)
class Truth(Node):
    """bool(x) for a bool/int/u64/float operand."""
    x: Node = None

    def children(self):
        return [self.x]


@dataclass(eq=False)
class Bin(Node):
    op: str = "+"                    # + - * / // % **; operands of one type (int or float)
    a: Node = None
    b: Node = None

    def children(self):
        return [self.a, self.b]


@dataclass(eq=False)
class Cmp(Node):
    """Chained comparison: operands[0] ops[0] operands[1] ops[1] ... (Python semantics)."""
    ops: list = field(default_factory=list)
    operands: list = field(default_factory=list)

    def children(self):
        return list(self.operands)


@dataclass(eq=False)
class In(Node):
    """x in items (tuple of Const of x's kind) or x in an extension set; negate: not in."""
    x: Node = None
    items: tuple = ()
    negate: bool = False
    symbol: object = None            # extension set (lists: issue 4) instead of items

    def children(self):
        return [self.x]


@dataclass(eq=False)
class BoolOp(Node):
    op: str = "and"                  # value-returning, all values of ``type``
    values: list = field(default_factory=list)

    def children(self):
        return list(self.values)


@dataclass(eq=False)
class IfExp(Node):
    cond: Node = None
    a: Node = None                   # value when cond is true
    b: Node = None

    def children(self):
        return [self.cond, self.a, self.b]


@dataclass(eq=False)
class Call(Node):
    fn: str = "abs"                  # abs (int may overflow), min, max, round (float -> int)
    args: list = field(default_factory=list)

    def children(self):
        return list(self.args)


def walk(node: Node):
    """Pre-order iteration over a tree."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children()))
