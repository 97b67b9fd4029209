"""Config validation: every bad key or value names its key path."""
import os

import pytest
import yaml

from engine.config import ConfigError, load_config, parse_config

BASE = {"schema": {"shard_key": "a", "fields": {"a": "u64", "b": "f64", "c": "bytes2"}}}


def cfg(**over):
    raw = {**BASE, **over}
    return parse_config(raw)


def test_bundled_default_loads():
    c = load_config()
    assert c.schema.shard_key == "account_id"
    assert c.rings.capacity == 4096
    assert len(c.rules.files) == 4 and all(f.endswith(".yaml") for f in c.rules.files)
    assert "txn_count_1m" in c.features and "blocked_ips" in c.lists


@pytest.mark.parametrize("over,key", [
    ({"ingres": {}}, "ingres"),
    ({"ingress": {"bnd": "x"}}, "ingress.bnd"),
    ({"ingress": {"max_batch": "10"}}, "ingress.max_batch"),
    ({"ingress": {"max_batch": 0}}, "ingress.max_batch"),
    ({"ingress": {"on_timeout": "maybe"}}, "ingress.on_timeout"),
    ({"rings": {"capacity": 1000}}, "rings.capacity"),
    ({"workers": {"cpus": [0, "x"]}}, "workers.cpus"),
    ({"workers": {"count": True}}, "workers.count"),
    ({"workers": {"spin_us": -1}}, "workers.spin_us"),
    ({"workers": {"standby": "yes"}}, "workers.standby"),
    ({"ingress": {"spin_us": 100_001}}, "ingress.spin_us"),
    ({"ingress": {"dedup_max_entries": 0}}, "ingress.dedup_max_entries"),
    ({"ingress": {"dedup_max_bytes": 63}}, "ingress.dedup_max_bytes"),
    ({"metrics": {"bind": "9108"}}, "metrics.bind"),
    ({"admin": {"bind": "tcp://0.0.0.0:7000"}}, "admin.bind"),
    ({"rules": {"thresholds": {"deny": 3}}}, "rules.thresholds"),
    ({"rules": {"files": "a.yaml"}}, "rules.files"),
    ({"instance": "a-b"}, "instance"),
    ({"schema": {"shard_key": "zz", "fields": {"a": "u64"}}}, "schema"),
    ({"schema": {"shard_key": "a", "fields": {"a": "u128"}}}, "schema"),
    ({"schema": {"shard_key": "a", "fields": {"a": "bytes65"}}}, "schema"),
    ({"schema": {"shard_key": "b", "fields": {"a": "u64", "b": "f64"}}}, "schema"),
])
def test_bad_values_name_the_key(over, key):
    with pytest.raises(ConfigError) as e:
        cfg(**over)
    assert e.value.key == key
    assert str(e.value).startswith(key)


def test_relative_rule_paths_resolve_against_config_dir(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "rules": {"files": ["r/x.yaml"]}}))
    c = load_config(p)
    assert c.rules.files == (str(tmp_path / "r" / "x.yaml"),)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_portable_raw_makes_file_paths_absolute_and_loads_anywhere(tmp_path):
    import yaml
    from engine.config import portable_raw
    raw = portable_raw()
    files = raw["rules"]["files"] + [s["file"] for s in raw["lists"].values() if s.get("file")]
    assert files and all(os.path.isabs(f) and os.path.exists(f) for f in files)
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(yaml.safe_dump(raw))
    assert load_config(moved).rules.files == load_config(None).rules.files
