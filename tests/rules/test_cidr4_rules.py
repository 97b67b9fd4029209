"""A cidr4 list is the kernel's (enforce:): a rule testing membership in it is refused at
compile time, since the kernels' exact search would never match an address against a prefix."""
import pytest

from rules import RulesetError, compile_ruleset
from shm.features.featureset import FeatureSet
from shm.features.spec import parse_specs
from shm.runtime.config import load_config

SCHEMA = load_config().schema


def test_a_rule_over_a_cidr4_list_is_refused(write_rules, kernel_cache):
    specs = parse_specs({}, {"nets": {"type": "cidr4", "file": "", "capacity": 4}}, {}, SCHEMA)
    p = write_rules("""
        ruleset: t
        version: 1
        rules:
          - {id: a, when: "ip in nets", action: block}
    """)
    with pytest.raises(RulesetError) as e:
        compile_ruleset([p], SCHEMA, cache_dir=kernel_cache, features=FeatureSet(specs, SCHEMA))
    msg = str(e.value.diagnostics[0])
    assert ":4:" in msg and "list nets is a cidr4 list: it is enforced in the kernel" in msg, msg


def test_a_rule_over_a_cidr6_list_is_refused(write_rules, kernel_cache):
    """cidr6 values are 136-bit prefixes: no u32/u64 field can be tested against them."""
    specs = parse_specs({}, {"nets6": {"type": "cidr6", "file": "", "capacity": 4}}, {}, SCHEMA)
    p = write_rules("""
        ruleset: t
        version: 1
        rules:
          - {id: a, when: "ip in nets6", action: block}
    """)
    with pytest.raises(RulesetError) as e:
        compile_ruleset([p], SCHEMA, cache_dir=kernel_cache, features=FeatureSet(specs, SCHEMA))
    msg = str(e.value.diagnostics[0])
    assert ":4:" in msg and "list nets6 is a cidr6 list: it is enforced in the kernel" in msg, msg
