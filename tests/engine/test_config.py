"""Config validation: every bad key or value names its key path."""
import os

import pytest
import yaml

from shm.runtime.config import ConfigError, load_config, parse_config

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
    from shm.runtime.config import portable_raw
    raw = portable_raw()
    files = raw["rules"]["files"] + [s["file"] for s in raw["lists"].values() if s.get("file")]
    assert files and all(os.path.isabs(f) and os.path.exists(f) for f in files)
    moved = tmp_path / "elsewhere.yaml"
    moved.write_text(yaml.safe_dump(raw))
    assert load_config(moved).rules.files == load_config(None).rules.files


def test_placeholders_are_resolved_once_when_the_config_is_read(tmp_path, monkeypatch):
    """{state}, {instance} and {run} become final paths in parse_config, so nothing downstream
    substitutes them; an instance override (serve --instance) is in place before they are made."""
    from shm.runtime.rundir import run_dir_for
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    c = cfg(instance="abc")
    assert c.durability.journal_dir == str(tmp_path / "state" / "abc" / "journal")
    assert c.durability.snapshot_dir == str(tmp_path / "state" / "abc" / "snapshots")
    assert c.admin.bind == f"ipc://{run_dir_for('abc')}/admin.sock"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "instance": "abc", "admin": {"bind": "ipc:///tmp/{instance}.sock"},
                                 "journal": {"dir": "j/{instance}"}, "snapshot": {"dir": "/s/{instance}"}}))
    o = load_config(p, instance="xyz")
    assert o.instance == "xyz" and o.admin.bind == "ipc:///tmp/xyz.sock"
    assert o.durability.journal_dir == str(tmp_path / "j" / "xyz") and o.durability.snapshot_dir == "/s/xyz"
    with pytest.raises(ConfigError) as e:
        load_config(p, instance="a/b")
    assert e.value.key == "--instance"
    import argparse
    from engine.cmd_serve import add_arguments, serve_config
    ap = argparse.ArgumentParser()
    add_arguments(ap)
    s = serve_config(ap.parse_args(["--instance", "cli7"]))
    assert s.instance == "cli7" and s.durability.journal_dir == str(tmp_path / "state" / "cli7" / "journal")


def test_a_resolved_config_parses_again_to_itself_and_is_validated_again(tmp_path, monkeypatch):
    """The supervisor hands children config_to_raw(cfg) (shm.runtime.rundir.write_config): parsing
    it again is idempotent, and it is validated again like a file."""
    from shm.runtime.config import config_to_raw
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    c = load_config()
    again = parse_config(config_to_raw(c), c.path)
    assert again == c and parse_config(config_to_raw(again), c.path) == c
    assert "{" not in again.durability.journal_dir + again.durability.snapshot_dir + again.admin.bind
    raw = config_to_raw(c)
    raw["admin"]["bind"] = "tcp://0.0.0.0:7000"
    with pytest.raises(ConfigError) as e:
        parse_config(raw, c.path)
    assert e.value.key == "admin.bind"


def test_journal_defaults_have_one_source():
    """The journal writer's defaults are the journal: section's (16 MiB segments, the
    documented default), not a second set of its own."""
    from shm.runtime.config import DurabilityConfig
    from engine.journal import JournalConfig
    assert JournalConfig() == cfg().durability.journal_config() == DurabilityConfig().journal_config()
    assert JournalConfig().segment_bytes == 16 << 20


# --- every error at once; a partial file overlays the bundled one (issue 25) ---------------

def list_file(c) -> str:
    """blocked_ips' file as the features layer opens it (relative: to the config's directory)."""
    return os.path.realpath(os.path.join(os.path.dirname(c.path), c.lists["blocked_ips"]["file"]))


def test_every_error_is_reported_with_its_key_path_and_a_did_you_mean():
    from shm.runtime.config_check import ConfigErrors
    with pytest.raises(ConfigErrors) as e:
        cfg(ingres={}, ingress={"bnd": "x", "max_batch": 0}, rings={"capacity": 1000},
            snapshot={"kep": 3}, workers={"count": True})
    keys = [err.key for err in e.value.errors]
    assert sorted(keys) == sorted(["ingres", "ingress.bnd", "ingress.max_batch", "rings.capacity",
                                   "snapshot.kep", "workers.count"])
    text = str(e.value)
    assert text.startswith("6 errors:")
    assert "ingres: unknown key; did you mean 'ingress'?" in text
    assert "ingress.bnd: unknown key; did you mean 'bind'?" in text
    assert "snapshot.kep: unknown key; did you mean 'keep'?" in text
    assert "rings.capacity: must be a power of two, got 1000" in text


def test_a_partial_config_file_overlays_the_bundled_one(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("ingress: {bind: 'tcp://127.0.0.1:6001'}\nsnapshot: {keep: 5}\n")
    c, d = load_config(p), load_config()
    assert c.ingress.bind == "tcp://127.0.0.1:6001"
    assert c.ingress.max_batch == d.ingress.max_batch          # the rest of the section stays
    assert (c.durability.snapshot_keep, c.durability.snapshot_interval_s) == (5, d.durability.snapshot_interval_s)
    assert c.schema.hash == d.schema.hash and c.features == d.features
    assert c.rules.files == d.rules.files and all(os.path.isfile(f) for f in c.rules.files)
    assert list_file(c) == list_file(d) and os.path.isfile(list_file(c))


def test_a_config_with_its_own_schema_gets_none_of_the_bundled_tables(tmp_path):
    p = tmp_path / "own.yaml"
    p.write_text(yaml.safe_dump({**BASE, "rules": {"files": ["r.yaml"]}}))
    c = load_config(p)
    assert c.schema.shard_key == "a" and c.features == {} and c.lists == {} and c.state == {}
    assert c.rules.files == (str(tmp_path / "r.yaml"),) and c.rules.thresholds == ()
    assert c.ingress.default_deadline_ms == load_config().ingress.default_deadline_ms


def test_print_default_writes_a_config_that_works_wherever_it_is_saved(tmp_path):
    import subprocess
    import sys
    from shm.runtime.config import config_to_raw
    from bench.engine_proc import REPO
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--print-default"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "# Bundled default configuration" in out.stdout          # comments kept
    saved = tmp_path / "elsewhere" / "engine.yaml"
    saved.parent.mkdir()
    saved.write_text(out.stdout)
    got = yaml.safe_load(out.stdout)                                  # complete on its own
    got.pop("instance", None)
    c, d = parse_config(got, str(saved)), load_config()
    assert list_file(c) == list_file(d) and os.path.isfile(list_file(c))
    rc, rd = config_to_raw(c), config_to_raw(d)
    for r in (rc, rd):
        r.pop("lists")
    assert rc == rd
    assert all(os.path.isfile(f) for f in c.rules.files)


def test_config_check_lists_every_error(tmp_path):
    import subprocess
    import sys
    from bench.engine_proc import REPO
    p = tmp_path / "bad.yaml"
    p.write_text("ingress: {max_bach: 10, on_timeout: maybe}\nmetrics: {enabeld: true}\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--check", "--config", str(p)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "3 errors" in out.stderr and "did you mean 'max_batch'" in out.stderr
    assert "did you mean 'enabled'" in out.stderr and "ingress.on_timeout" in out.stderr


def test_config_check_reads_the_feature_sections_and_list_files(tmp_path):
    # parse_config keeps features/lists/state raw: --check once said "ok" for a config whose
    # features, list files or list sizes `serve` then refused
    import subprocess
    import sys
    from bench.engine_proc import REPO
    (tmp_path / "ips.txt").write_text("10.0.0.1\n10.0.0.300\n")
    (tmp_path / "nums.txt").write_text("1\n2\n3\n")
    p = tmp_path / "c.yaml"
    p.write_text("features:\n"
                 "  f1: {kind: nope, key: account_id}\n"
                 "  f2: {kind: count, key: no_such_field, window: 1h}\n"
                 "lists:\n"
                 "  blocked_ips: {type: ipv4, file: ips.txt}\n"
                 "  small: {type: u32, file: nums.txt, capacity: 2}\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--check", "--config", str(p)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "4 errors" in out.stderr
    for want in ("features.f1.kind", "features.f2.key", "lists.blocked_ips.file",
                 "ips.txt:2:", "lists.small.file", "3 values exceed capacity=2"):
        assert want in out.stderr, (want, out.stderr)
    (tmp_path / "ips.txt").write_text("10.0.0.1\n")
    p.write_text("lists:\n  blocked_ips: {type: ipv4, file: ips.txt}\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--check", "--config", str(p)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and ": ok" in out.stdout, out
