"""Corpus of rejected rules: every non-allowlisted construct, unknown names, type errors,
each with its exact file:line:col (the ruleset is refused, nothing is generated)."""
from __future__ import annotations

import pytest

from rules.compiler import check_ruleset
from rules.diagnostics import RulesetError

HEAD = 'ruleset: t\nversion: 1\nconstants: {BIG: 100, HIGH_RISK: ["NG", "RU"]}\nrules:\n  - id: r1\n    when: "'
LINE, COL0 = 6, 12          # the expression starts at line 6, column 12 (1-based)

CORPUS = [
    # (expression, 0-based offset of the reported node, message fragment)
    ("amount.real > 1", 0, "attribute access is not allowed"),
    ("amount > 1 and qty.bit_length() > 0", 15, "only calls of abs, min, max, round, between"),
    ("amount > 1 and country[0] == 1", 15, "subscripts are not allowed"),
    ("between(lambda: 1, 0, 1)", 8, "lambda is not allowed"),
    ("[x for x in (1, 2)]", 0, "comprehensions are not allowed"),
    ("{x for x in (1, 2)}", 0, "comprehensions are not allowed"),
    ("max(a for a in (1, 2)) > 0", 3, "generator expressions are not allowed"),
    ("f'{amount}' == b'1'", 0, "f-strings are not allowed"),
    ("open('x') > 0", 0, "call of 'open' is not allowed"),
    ("any((1, 2))", 0, "call of 'any' is not allowed"),
    ("float(qty) > 1.5", 0, "call of 'float' is not allowed"),
    ("__import__('os') > 0", 0, "name '__import__' is not allowed (dunder names are reserved)"),
    ("amount.__class__ > 0", 0, "attribute access is not allowed"),
    ("__builtins__ > 1", 0, "name '__builtins__' is not allowed"),
    ("import os", 0, "syntax error"),
    ("amount > 1 and", 0, "syntax error"),
    ("amount is None", 0, "'is' / 'is not' are not allowed"),
    ("amount & 1", 0, "bitwise operators are not allowed"),
    ("qty << 2 > 0", 0, "bitwise operators are not allowed"),
    ("~qty > 0", 0, "operator ~ is not allowed"),
    ("(x := 1) > 0", 1, "assignment expressions (:=) are not allowed"),
    ("qty in [1, 2]", 7, "list displays are not allowed"),
    ("{'a': 1} == 1", 0, "dict displays are not allowed"),
    ("amount > None", 9, "literal None is not allowed"),
    ("amount > 1j", 9, "literal 1j is not allowed"),
    ("amount > ...", 9, "literal Ellipsis is not allowed"),
    ("abs(x=1) > 0", 0, "abs() takes no keyword arguments"),
    ("max(*qty) > 0", 0, "starred arguments are not allowed"),
    # names
    ("amounts > 1", 0, "unknown name 'amounts' (not a field, constant, feature or list); did you mean 'amount'?"),
    ("txn_count_1m > 5", 0, "unknown name 'txn_count_1m'"),
    ("amount > HIGH_RISK", 9, "constant HIGH_RISK is a list: use it as 'x in HIGH_RISK'"),
    # str vs bytes
    ("country == 'NG'", 11, "str literal 'NG' compared with bytes2 field country: write b'NG'"),
    ("'NG' == country", 0, "write b'NG'"),
    ("country in ('NG', 'RU')", 12, "write b'NG'"),
    ("country == b'NGA'", 11, "is longer than bytes2 field country: it can never match"),
    # escapes in a double-quoted YAML scalar: positions fall back to the scalar's start
    ("country == b'N\\\\x00'", -1, "bytes literal ends with \\x00"),
    ("amount == 'NG'", 10, "str literal 'NG' is not allowed; bytes fields compare with b'NG'"),
    ("country > b'A'", 0, "bytes support only == != in and not in, got >"),
    ("b'a' == b'a'", 0, "compare bytes literals with a bytes field"),
    # type errors
    ("amount + country > 1", 9, "operator + needs a number, got bytes2 field country"),
    ("-currency == b'US'", 1, "unary - needs a number, got bytes3 field currency"),
    ("amount if country else 1", 10, "has no truth value"),
    ("not country", 4, "bytes2 field country has no truth value"),
    ("country and amount > 1", 0, "has no truth value"),
    ("country", 0, "has no truth value"),
    ("country == 1", 11, "cannot compare bytes2 field country with int"),
    ("abs(country) > 1", 4, "abs() needs a number, got bytes2 field country"),
    ("amount > (1, 2)", 9, "tuples are only allowed after 'in'"),
    ("amount in amount", 10, "right side of 'in' must be a list constant"),
    ("amount in BIG", 10, "BIG is a single value"),
    ("amount in (1, qty)", 14, "tuple/set items after 'in' must be literals or scalar constants"),
    ("country in (1, 2)", 12, "cannot compare bytes2 field country with int"),
    ("qty in HIGH_RISK", 7, "cannot test i64 field qty against str items"),
    ("amount < 1 in (1, 2)", 0, "'in' cannot be chained"),
    ("min(amount) > 1", 0, "min() needs at least two arguments, got 1"),
    ("round(amount, 2) > 1", 0, "round() takes exactly one argument in rules, got 2"),
    ("between(amount, 1) ", 0, "between(x, lo, hi) takes 3 arguments, got 2"),
    ("amount > 99999999999999999999", 9, "integer literal 99999999999999999999 is outside the int64 range"),
    ("qty > -9223372036854775809", 6, "integer literal -9223372036854775809 is outside the int64 range"),
    # always failing constants
    ("1 // 0 > amount", 0, "expression always fails: integer division or modulo by zero"),
    ("amount > 2 ** 64", 9, "expression always fails: integer overflow"),
    # limits
    ("-(" * 70 + "qty" + ")" * 70 + " > 0", 126, "expression nests deeper than 64 levels"),
    ("qty + " * 1000 + "1 > 0", 0, "expression is 6005 characters long (limit 4096)"),
]


def _diags(write_rules, expr: str):
    path = write_rules(HEAD + expr.replace('"', '\\"') + '"\n    action: block\n')
    with pytest.raises(RulesetError) as ei:
        check_ruleset([path], _schema())
    return path, ei.value


def _schema():
    from shm.runtime.config import load_config
    return load_config(None).schema


@pytest.mark.parametrize("expr,offset,message", CORPUS, ids=[c[0][:40] for c in CORPUS])
def test_rejected_with_exact_position(write_rules, expr, offset, message):
    path, err = _diags(write_rules, expr)
    assert len(err.diagnostics) >= 1
    d = err.diagnostics[0]
    assert (d.file, d.line, d.col, d.rule_id) == (path, LINE, COL0 + offset, "r1"), str(err)
    assert message in d.message, str(err)
    assert str(d) == f"{path}:{LINE}:{COL0 + offset}: rule r1: {d.message}"
    assert str(err).endswith("ruleset refused")


def test_every_error_of_a_rule_is_reported(write_rules):
    path, err = _diags(write_rules, "foo > 1 and bar < 2 and country == 'NG'")
    assert [(d.line, d.col) for d in err.diagnostics] == [(6, 12), (6, 24), (6, 47)]


def test_position_inside_a_folded_multiline_expression(write_rules):
    path = write_rules("""
        ruleset: t
        version: 1
        rules:
          - id: folded
            when: >-
              amount > 100 and
              country == 'NG'
            action: block
    """)
    with pytest.raises(RulesetError) as ei:
        check_ruleset([path], _schema())
    d = ei.value.diagnostics[0]
    assert (d.line, d.col, d.rule_id) == (7, 18, "folded")


def test_errors_across_files_are_all_reported(write_rules):
    a = write_rules("ruleset: a\nversion: 1\nrules:\n  - {id: dup, when: 'qty > 1'}\n  - {id: bad, when: 'qty >'}\n", "a.yaml")
    b = write_rules("ruleset: b\nversion: 2\nrules:\n  - {id: dup, when: 'qty > 2'}\n  - {id: x, when: 'nope > 1'}\n", "b.yaml")
    with pytest.raises(RulesetError) as ei:
        check_ruleset([a, b], _schema())
    got = [(d.file, d.line, d.col, d.rule_id, d.message.split(" (")[0].split(":")[0]) for d in ei.value.diagnostics]
    assert got == [(a, 5, 22, "bad", "syntax error"),
                   (b, 4, 5, "dup", "duplicate rule id"),
                   (b, 5, 20, "x", "unknown name 'nope'")]


LOADER_CORPUS = [
    ("ruleset: t\nversion: 1\nrules:\n  - {id: Bad-Id, when: 'qty > 1'}\n", 4, 10, "", "rule id 'Bad-Id' must match"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, action: block}\n", 4, 5, "r", "missing key 'when'"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 'qty > 1', action: deny}\n", 4, 38, "r", "action must be one of allow, review, block"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 'qty > 1', score: high}\n", 4, 37, "r", "score must be int or float"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 'qty > 1', mode: dry}\n", 4, 36, "r", "mode must be enforce or shadow"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 'qty > 1', enabled: 1}\n", 4, 39, "r", "enabled must be bool"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 'qty > 1', severity: 3}\n", 4, 30, "r", "unknown key 'severity'"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 5}\n", 4, 19, "r", "when must be str"),
    ("ruleset: t\nversion: x\nrules: []\n", 2, 10, "", "version must be an integer"),
    ("ruleset: t\nversion: 1\nrules: {}\n", 3, 8, "", "rules must be a list"),
    ("ruleset: t\nversion: 1\nextra: 1\nrules: []\n", 3, 1, "", "unknown key 'extra'"),
    ("ruleset: t\nversion: 1\nversion: 2\nrules: []\n", 3, 1, "", "duplicate key 'version'"),
    ("ruleset: t\nversion: 1\nconstants: {amount: 1}\nrules: []\n", 3, 13, "", "constant amount shadows the schema field"),
    ("ruleset: t\nversion: 1\nconstants: {__x: 1}\nrules: []\n", 3, 13, "", "must be an identifier (no dunder)"),
    ("ruleset: t\nversion: 1\nconstants: {L: [1, 'a']}\nrules: []\n", 3, 16, "", "mixes strings and numbers"),
    ("ruleset: t\nversion: 1\nrules:\n  - {id: r, when: 'qty > 1'\n", 5, 1, "", "invalid YAML"),
    ("- a\n- b\n", 1, 1, "", "a rule file is a mapping"),
]


@pytest.mark.parametrize("text,line,col,rule_id,message", LOADER_CORPUS, ids=[c[4][:30] for c in LOADER_CORPUS])
def test_loader_errors_with_exact_position(write_rules, text, line, col, rule_id, message):
    path = write_rules(text)
    with pytest.raises(RulesetError) as ei:
        check_ruleset([path], _schema())
    d = ei.value.diagnostics[0]
    assert (d.line, d.col, d.rule_id) == (line, col, rule_id), str(ei.value)
    assert message in d.message, str(ei.value)


def test_more_enabled_rules_than_the_engine_counts_are_refused(tmp_path):
    """shm.types.MAX_RULES is the one limit: `check` refuses what the engine could not serve
    (its control block keeps a hit and an error counter per rule)."""
    from shm.runtime.config import load_config
    from shm.types import MAX_RULES
    body = "".join(f"  - {{id: r{i}, when: 'amount > {i}'}}\n" for i in range(MAX_RULES + 1))
    off = "  - {id: off, when: 'amount > 0', enabled: false}\n"
    schema = load_config().schema
    ok = tmp_path / "ok.yaml"
    ok.write_text("ruleset: t\nversion: 1\nrules:\n" + "".join(body.splitlines(True)[:MAX_RULES]) + off)
    check_ruleset([str(ok)], schema)                       # the limit itself, a disabled rule beside it
    over = tmp_path / "over.yaml"
    over.write_text("ruleset: t\nversion: 1\nrules:\n" + body)
    with pytest.raises(RulesetError) as e:
        check_ruleset([str(over)], schema)
    assert f"{MAX_RULES + 1} enabled rules (limit {MAX_RULES})" in str(e.value)
