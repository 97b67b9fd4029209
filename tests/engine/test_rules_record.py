"""engine/rules_record.py: which rule files a start serves after reloads, on real files (the
engine-level restart is tests/engine/test_commands.py::test_reloaded_rules_survive_a_restart)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.rules_record import RECORD, RecordError, files_at_start, read_rules, record_dir, write_record


def cfg_for(tmp_path, files, journal=True):
    return SimpleNamespace(rules=SimpleNamespace(files=tuple(str(f) for f in files)),
                           durability=SimpleNamespace(journal_enabled=journal,
                                                      journal_dir=str(tmp_path / "journal")))


def rule(path, version):
    path.write_text(f"ruleset: live\nversion: {version}\nrules: []\n")
    return str(path)


def record(cfg, files, label="live@2"):
    return write_record(cfg, read_rules([(f, f) for f in files]), label)


def test_a_reload_is_restored_and_a_changed_file_comes_from_its_copy(tmp_path):
    v1, v2 = rule(tmp_path / "v1.yaml", 1), rule(tmp_path / "v2.yaml", 2)
    cfg, logs = cfg_for(tmp_path, [v1]), []
    assert files_at_start(cfg, logs.append) == [(v1, v1)]            # nothing recorded yet
    path = record(cfg, [v2])
    assert (record_dir(cfg).stat().st_mode & 0o777) == 0o700 and (tmp_path / "journal" / "rules" / RECORD) \
        .stat().st_mode & 0o777 == 0o600 and path.endswith(RECORD)
    assert files_at_start(cfg, logs.append) == [(v2, v2)]            # unchanged: read in place
    rule(tmp_path / "v2.yaml", 9)                                     # edited, never reloaded
    (path_, source), = files_at_start(cfg, logs.append)
    assert path_ == v2 and source != v2 and "version: 2" in open(source).read()
    assert "changed since it was reloaded" in logs[-2]
    (tmp_path / "v2.yaml").unlink()
    assert "version: 2" in open(files_at_start(cfg, logs.append)[0][1]).read()
    assert "vanished since it was reloaded" in logs[-2]


def test_a_changed_config_wins_and_no_journal_records_nothing(tmp_path):
    v1, v2, v3 = (rule(tmp_path / f"v{i}.yaml", i) for i in (1, 2, 3))
    cfg, logs = cfg_for(tmp_path, [v1]), []
    record(cfg, [v2])
    assert files_at_start(cfg_for(tmp_path, [v3]), logs.append) == [(v3, v3)]
    assert "not restoring the reloaded ruleset" in logs[-1]
    off = cfg_for(tmp_path / "off", [v1], journal=False)
    assert record(off, [v2]) is None and files_at_start(off, logs.append) == [(v1, v1)]


def test_a_damaged_record_or_copy_stops_the_start(tmp_path):
    v1, v2 = rule(tmp_path / "v1.yaml", 1), rule(tmp_path / "v2.yaml", 2)
    cfg = cfg_for(tmp_path, [v1])
    record(cfg, [v2])
    (tmp_path / "v2.yaml").unlink()
    rdir = record_dir(cfg)
    copy = next(p for p in rdir.rglob("v2.yaml"))
    copy.write_text("ruleset: live\nversion: 666\nrules: []\n")       # not what was compiled
    with pytest.raises(RecordError, match="missing or damaged"):
        files_at_start(cfg, print)
    (rdir / RECORD).write_text("{not json")
    with pytest.raises(RecordError, match="remove it to start with rules.files"):
        files_at_start(cfg, print)
