"""Each compiler pass on its own: parse, allowlist, type-check, fold, reference, codegen."""
from __future__ import annotations

import ast

import pytest

from rules import ir
from rules.codegen import RuleEmitter, chunks_of, flit, ilit
from rules.fold import FoldError, fold
from rules.loader import ConstantDef, PositionMap
from rules.parse import MAX_DEPTH, ExprError, allowlist, check_depth, parse_expr
from rules.reference import EvalError, binop, evaluate
from rules.symbols import ExtSet, ExtValue, Symbols
from rules.typecheck import typecheck


def _sym(schema, **consts):
    return Symbols(schema, {k: ConstantDef(k, v, 1, 1) for k, v in consts.items()})


def _typed(text, schema, **consts):
    node, errs = typecheck(parse_expr(text), _sym(schema, **consts))
    assert not errs, [e.message for e in errs]
    return node


# --- parse / allowlist -------------------------------------------------------------------
def test_parse_is_eval_mode_only():
    assert isinstance(parse_expr("a + 1"), ast.BinOp)
    with pytest.raises(ExprError, match="syntax error"):
        parse_expr("x = 1")
    with pytest.raises(ExprError, match="empty expression"):
        parse_expr("   ")


def test_depth_limit_is_exact():
    ok = parse_expr("-" * (MAX_DEPTH - 2) + "x > 0")    # Compare + (MAX_DEPTH-2) USub + Name
    check_depth(ok)
    with pytest.raises(ExprError, match="deeper than 64"):
        check_depth(parse_expr("-" * (MAX_DEPTH - 1) + "x > 0"))


def test_allowlist_reports_all_in_source_order():
    errs = allowlist(parse_expr("a.b > 1 and c[0] and open(1)"))
    assert [(e.col, e.message.split()[0]) for e in errs] == [(0, "attribute"), (12, "subscripts"), (21, "call")]
    assert allowlist(parse_expr("between(x, 1, 2) and not (y in (1, 2)) or -z ** 2 // 3 % 4 > (a if b else c)")) == []


# --- type check ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,typ", [
    ("i64f + 1", "int"), ("i64f / 2", "float"), ("i64f ** 2", "int"), ("i64f ** -1", "float"),
    ("i64f + f32f", "float"), ("flag + 1", "int"), ("-flag", "int"), ("round(f64f)", "int"),
    ("abs(i8f)", "int"), ("min(i8f, f64f)", "float"), ("i64f and f64f", "float"),
    ("flag and flag", "bool"), ("1 if flag else 2", "int"), ("k", "u64"), ("k + 1", "int"),
])
def test_expression_types(all_schema, text, typ):
    node = _typed(text, all_schema)
    assert node.type == "bool"                       # the condition is a truth test on top
    inner = node.x if isinstance(node, ir.Truth) else node
    assert inner.type == typ


def test_str_constant_becomes_bytes_next_to_a_bytes_field(all_schema):
    node = _typed("code in CODES", all_schema, CODES=("AB", "C"))
    assert [c.value for c in node.items] == [b"AB", b"C"] and node.x.name == "code"


def test_u64_compare_keeps_u64(all_schema):
    node = _typed("k > 5", all_schema)
    assert [o.type for o in node.operands] == ["u64", "int"]


# --- fold --------------------------------------------------------------------------------------
def test_fold_constants_and_short_circuit(all_schema):
    assert fold(_typed("1 + 2 * 3 > 6", all_schema)).value is True
    n = fold(_typed("(BIG * 2 > 10) and i8f > 1", all_schema, BIG=10))
    assert isinstance(n, ir.Cmp)                      # the constant true operand is dropped
    assert fold(_typed("False and i8f > 1", all_schema)).value is False
    assert isinstance(fold(_typed("(i8f if True else i16f) > 0", all_schema)).operands[0], ir.Field)
    with pytest.raises(FoldError, match="always fails"):
        fold(_typed("1 % 0 > i8f", all_schema))


# --- reference semantics (Python's, int64 range) -------------------------------------------------
@pytest.mark.parametrize("op,t,a,b", [
    ("//", "int", -7, 2), ("%", "int", -7, 2), ("//", "int", 7, -2), ("%", "int", 7, -2),
    ("//", "float", -7.5, 2.0), ("%", "float", -7.5, 2.0), ("%", "float", 7.5, -2.0),
    ("/", "int", 2**62 + 1, 3), ("**", "float", -8.0, 3.0), ("**", "int", -3, 3),
])
def test_binop_follows_python(op, t, a, b):
    assert binop(op, t, a, b) == eval(f"a {op} b")


@pytest.mark.parametrize("op,t,a,b", [
    ("+", "int", 2**63 - 1, 1), ("*", "int", 2**32, 2**32), ("//", "int", -2**63, -1),
    ("//", "int", 1, 0), ("%", "float", 1.0, 0.0), ("/", "float", 1.0, 0.0),
    ("**", "float", 10.0, 400.0), ("**", "float", -8.0, 0.5), ("**", "float", 0.0, -1.0),
    ("**", "int", 2, 64), ("**", "int", 2, -1),
])
def test_binop_errors(op, t, a, b):
    with pytest.raises(EvalError):
        binop(op, t, a, b)


def test_chained_comparison_short_circuits(all_schema):
    node = fold(_typed("i8f > 1 > 100 // i16f", all_schema))
    assert evaluate(node, {"i8f": 0, "i16f": 0}) is False     # 100 // 0 never evaluated
    with pytest.raises(EvalError):
        evaluate(node, {"i8f": 5, "i16f": 0})


# --- codegen ---------------------------------------------------------------------------------
def test_literals_are_reprinted():
    assert flit(float("nan")) == "np.nan" and flit(float("-inf")) == "(-np.inf)" and flit(0.1) == "0.1"
    assert ilit(-2**63) == "(-9223372036854775807 - 1)"
    assert chunks_of(b"NG", 2) == [0x474E] and chunks_of(b"0123456789", 10) == [0x3736353433323130, 0x3938]


def test_emitter_never_copies_rule_text(all_schema):
    node = fold(_typed("i64f // 3 > 1 and code == b'AB'", all_schema))
    em = RuleEmitter(0, {}, {})
    cond = em.expr(node, 1)
    src = "\n".join(em.lines) + cond
    assert "_floordiv_ii(f_i64f, 3)" in src and "b_code_0 == 0x4241" in src and "b'AB'" not in src


def test_position_map_fallback():
    pm = PositionMap(None, (3, 9))
    assert pm.at("a > 1", 1, 4) == (3, 9)


# --- extension point (features, lists: issue 4) -----------------------------------------------
class _Count(ExtValue):
    type = "int"
    kernel_args = ("counts",)

    def kernel_load(self, ev_var, i_var):
        return f"counts[{i_var}]"

    def reference_value(self, event, state):
        return state["count"]


class _Blocked(ExtSet):
    element_type = "int"
    kernel_args = ("blocked",)

    def kernel_contains(self, value_code):
        return f"_in_sorted_i(np.int64({value_code}), blocked)"

    def reference_contains(self, value, state):
        return value in state["blocked"]


def test_extension_symbols_type_check_and_evaluate(all_schema):
    sym = Symbols(all_schema, {}, {"txn_count_1m": _Count(), "blocked_ips": _Blocked()})
    node, errs = typecheck(parse_expr("txn_count_1m > 5 or u32f in blocked_ips"), sym)
    assert not errs
    node = fold(node)
    assert evaluate(node, {"u32f": 7}, {"count": 6, "blocked": set()}) is True
    assert evaluate(node, {"u32f": 7}, {"count": 1, "blocked": {7}}) is True
    assert evaluate(node, {"u32f": 8}, {"count": 1, "blocked": {7}}) is False
    em = RuleEmitter(0, {}, {})
    code = em.expr(node, 1)
    src = "\n".join(em.lines)
    assert "(counts[i]) > 5" in src and "_in_sorted_i(np.int64(f_u32f), blocked)" in src
