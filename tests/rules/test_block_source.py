"""``block_source: {ttl: DURATION}`` in the rule language (rules/loader.py): accepted forms
become the rule's ttl in ms (carried to the compiled ruleset for the workers), every bad form
is refused with its file:line:col and one message, and the ruleset with it."""
from __future__ import annotations

import pytest

from rules.compiler import check_ruleset
from rules.diagnostics import RulesetError
from rules.loader import parse_ttl_ms
from tests.rules.test_rejected import _schema

HEAD = "ruleset: t\nversion: 1\nrules:\n"


@pytest.mark.parametrize("ttl,ms", [("10m", 600_000), ("2s", 2000), ("1h", 3_600_000),
                                    ("1500ms", 1500), ("30", 30_000), ("24h", 86_400_000)])
def test_accepted_ttls(write_rules, ttl, ms):
    path = write_rules(HEAD + f"  - {{id: r, when: 'qty > 1', action: block, block_source: {{ttl: {ttl}}}}}\n"
                       "  - {id: plain, when: 'qty > 2'}\n")
    loaded, compiled = check_ruleset([path], _schema())
    assert [(r.id, r.block_ttl_ms) for r, _ in compiled] == [("r", ms), ("plain", 0)]


REFUSED = [
    ("{ttl: 10 m}", 4, 65, "block_source.ttl must be a duration like 30s, 10m, 1h"),
    ("{ttl: 500ms}", 4, 65, "from 1s to 24h, got '500ms'"),
    ("{ttl: 25h}", 4, 65, "from 1s to 24h, got '25h'"),
    ("{ttl: 0}", 4, 65, "block_source.ttl must be"),
    ("{ttl: -5s}", 4, 65, "block_source.ttl must be"),
    ("{ttl: true}", 4, 65, "block_source.ttl must be"),
    ("{ttl: [1]}", 4, 65, "got a collection"),
    ("{}", 4, 59, "block_source takes exactly one key, ttl (got none)"),
    ("{ttl: 1m, scope: all}", 4, 59, "block_source takes exactly one key, ttl (got 'ttl', 'scope')"),
    ("10m", 4, 59, "block_source must be a mapping {ttl: DURATION}"),
]


@pytest.mark.parametrize("value,line,col,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_exact_position(write_rules, value, line, col, message):
    path = write_rules(HEAD + f"  - {{id: r, when: 'qty > 1', action: block, block_source: {value}}}\n")
    with pytest.raises(RulesetError) as ei:
        check_ruleset([path], _schema())
    d = ei.value.diagnostics[0]
    assert (d.line, d.col, d.rule_id) == (line, col, "r"), str(ei.value)
    assert message in d.message, str(ei.value)
    assert str(ei.value).endswith("ruleset refused")


def test_parse_ttl_bounds():
    assert parse_ttl_ms("1s") == 1000 and parse_ttl_ms("999ms") is None
    assert parse_ttl_ms(86_400) == 86_400_000 and parse_ttl_ms(86_401) is None
    assert parse_ttl_ms(1.5) is None and parse_ttl_ms("1.5s") is None
