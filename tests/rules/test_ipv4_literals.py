"""Addresses in rules next to an ipv4 field (issue 25): ``ip == "10.0.0.1"``, a tuple of
addresses, ``ip in "10.0.0.0/8"``; strict at build time; kernel and oracle agree."""
from __future__ import annotations

import numpy as np
import pytest

from rules import compile_ruleset
from rules.compiler import RulesetError
from rules.parse import parse_expr
from rules.symbols import Symbols
from rules.typecheck import typecheck
from shm.schema import Schema

SCHEMA = Schema.build({"k": "u64", "ip": "ipv4", "n": "u32"}, "k")
RULES = """
ruleset: net
version: 1
rules:
  - {id: one, when: 'ip == "10.0.0.1"', score: 1}
  - {id: several, when: 'ip in ("192.0.2.1", "192.0.2.9")', score: 2}
  - {id: block8, when: 'ip in "10.0.0.0/8"', score: 4}
  - {id: not24, when: 'ip not in "203.0.113.0/24" and ip >= "1.0.0.0"', score: 8}
  - {id: all, when: 'ip in "0.0.0.0/0"', score: 16}
"""


def errors(text: str) -> list[str]:
    return [e.message for e in typecheck(parse_expr(text), Symbols(SCHEMA))[1]]


@pytest.mark.parametrize("text,why", [
    ('ip == "010.0.0.1"', "leading zero"), ('ip in "10.0.0.1/8"', "host bits set"),
    ('ip in "10.0.0.0/33"', "prefix length"), ('ip in ("10.0.0.1", "1.2.3")', "four decimal octets"),
    ('n == "10.0.0.1"', "str literal"), ('ip == b"10.0.0.1"', "")])
def test_bad_addresses_fail_at_build_time(text, why):
    errs = errors(text)
    assert errs and why in errs[0], errs


IPS = [0x0A000001, 0x0AFFFFFF, 0x0B000000, 0xC0000201, 0xC0000209, 0xCB007107, 0x00FFFFFF, 0]
WANT = [1 + 4 + 8 + 16, 4 + 8 + 16, 8 + 16, 2 + 8 + 16, 2 + 8 + 16, 16, 16, 16]


def test_the_oracle_reads_addresses_and_blocks():
    import yaml
    from rules.reference import evaluate
    rules = yaml.safe_load(RULES)["rules"]
    nodes = [typecheck(parse_expr(r["when"]), Symbols(SCHEMA))[0] for r in rules]
    got = [sum(r["score"] for r, n in zip(rules, nodes) if evaluate(n, {"k": 0, "ip": ip, "n": 0}))
           for ip in IPS]
    assert got == WANT


@pytest.mark.slow
def test_kernel_and_oracle_agree(tmp_path):
    f = tmp_path / "net.yaml"
    f.write_text(RULES)
    rs = compile_ruleset([str(f)], SCHEMA, cache_dir=tmp_path / "cache")
    ev = np.zeros(len(IPS), SCHEMA.dtype)
    ev["ip"] = IPS
    assert rs.evaluate(ev)["score"].tolist() == WANT
    assert [rs.reference(e)[1] for e in ev] == WANT
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("10.0.0.0/8", "10.0.0.0/08"))
    with pytest.raises(RulesetError, match="prefix length"):
        compile_ruleset([str(bad)], SCHEMA, cache_dir=tmp_path / "cache")
