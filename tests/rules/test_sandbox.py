"""Adversarial rule corpus (issue 7): refused with clear errors in bounded time and memory;
the compiler never executes rule text."""
from __future__ import annotations

import resource
import time

import pytest
import yaml

from shm.runtime.config import load_config
from rules import RulesetError, compile_ruleset

SCHEMA = load_config().schema


def compile_text(tmp_path, when: str, constants=None, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"ruleset": "adv", "version": 1, "constants": constants or {},
                                 "rules": [{"id": "r1", "when": when, "action": "block"}]}))
    return compile_ruleset([str(p)], SCHEMA, cache_dir=str(tmp_path / "cache"))


def refused(tmp_path, when, match, constants=None, limit_s=10.0):
    t0 = time.monotonic()
    with pytest.raises(RulesetError) as e:
        compile_text(tmp_path, when, constants)
    assert time.monotonic() - t0 < limit_s
    assert match in str(e.value), str(e.value)
    return str(e.value)


@pytest.mark.parametrize("when", [
    "__import__('os').system('true') > 0",
    "amount.__class__ > 0",
    "amount.real.imag > 0",
    "(lambda: 1)() > 0",
    "open('/etc/passwd') == 0",
    "[x for x in (1, 2)] == 0",
    "f'{amount}' == 0",
])
def test_escapes_are_refused(tmp_path, when):
    assert "r.yaml:5:" in refused(tmp_path, when, "rule r1")


def test_huge_power_is_not_computed_at_compile_time(tmp_path):
    """10**10**10 would take forever and gigabytes if folded: it must be refused or left to
    the kernel's evaluation-error path, quickly either way."""
    t0 = time.monotonic()
    try:
        rs = compile_text(tmp_path, "amount > 10**10**10")
    except RulesetError as e:
        assert "r1" in str(e)
    else:
        out = rs.evaluate(__import__("numpy").zeros(1, SCHEMA.dtype))
        assert out["action"][0] in (0, 2)
    assert time.monotonic() - t0 < 60


def test_ten_thousand_deep_nesting_is_refused(tmp_path):
    refused(tmp_path, "(" * 10_000 + "amount" + ")" * 10_000 + " > 0", "rule r1")


def test_fifty_megabyte_rule_file_is_refused_quickly(tmp_path):
    p = tmp_path / "big.yaml"
    with open(p, "w") as f:
        f.write("ruleset: big\nversion: 1\nrules:\n")
        line = "  - {id: r%d, when: \"amount > 1\", action: allow}\n"
        i = 0
        while f.tell() < 50 << 20:
            f.write(line % i)
            i += 1
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(RulesetError) as e:
        compile_ruleset([str(p)], SCHEMA, cache_dir=str(tmp_path / "cache"))
    assert time.monotonic() - t0 < 10
    assert "big.yaml" in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024   # KiB


def test_unicode_confusable_name_is_refused(tmp_path):
    msg = refused(tmp_path, "\u0430mount > 10", "rule r1")       # Cyrillic a, looks like 'amount'
    assert "\u0430mount" in msg or "amount" in msg
