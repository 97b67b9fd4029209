"""Rule and list files are read as untrusted input (issue 19, defect 5): only regular files,
a byte limit, YAML tags and bad scalars reported with file:line:col, never an exception, a
hang or the whole file in a message."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shm.features.lists import MAX_LIST_FILE_BYTES, ListError, load_list_file, parse_value
from rules.diagnostics import Sink
from rules.loader import load_rule_file


def check(*args, timeout_s=120):
    return subprocess.run([sys.executable, "-m", "engine.cli", "check", "--no-kernel", *args],
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory"])
def test_check_refuses_what_is_not_a_regular_file(tmp_path, kind):
    path = {"dev_zero": "/dev/zero", "fifo": str(tmp_path / "f.yaml"), "directory": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    out = check("--rules", path)               # /dev/zero hit MemoryError, a FIFO blocked
    assert out.returncode == 2, out
    assert f"risk-engine check: {path}: rule file is not a regular file" in out.stderr


@pytest.mark.parametrize("text,pos,what", [
    ("ruleset: !!python/name:os.system evil\nversion: 1\nrules: []\n", "1:10", "tag:yaml.org,2002:python/name:os.system"),
    ("ruleset: x\nversion: !!python/object/apply:os.system ['id']\nrules: []\n", "2:10", "python/object/apply"),
    ('ruleset: x\nversion: 1\nrules:\n  - {id: a, when: "qty > 1", score: !!int "0x_"}\n', "4:37", "tag:yaml.org,2002:int"),
    ("ruleset: x\nversion: !!float abc\nrules: []\n", "2:10", "float"),
    ("ruleset: x\nversion: 1\nconstants: {A: !!timestamp 2020-99-99}\nrules: []\n", "3:16", "timestamp"),
])
def test_yaml_tags_and_bad_scalars_are_diagnostics(tmp_path, text, pos, what):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    sink = Sink(str(p))
    load_rule_file(str(p), sink)               # raised ConstructorError / ValueError before
    msgs = [str(d) for d in sink.out]
    assert any(m.startswith(f"{p}:{pos}: ") and what in m for m in msgs), msgs
    out = check("--rules", str(p))
    assert out.returncode == 1 and f"{p}:{pos}: " in out.stdout, out


def test_list_files_regular_bounded_and_never_echoed(tmp_path):
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        with pytest.raises(ListError, match="not a regular file"):
            load_list_file(path, "u32")
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(MAX_LIST_FILE_BYTES + 1)      # sparse: no disk used
    with pytest.raises(ListError, match="over the limit"):
        load_list_file(str(big), "u32")
    secret = "root:$6$S3cr3tSaltS3cr3tSalt$0123456789abcdefghijklmnopqrstuvwxyz:19000:0:99999:7:::"
    bad = tmp_path / "bad.txt"
    bad.write_text("1.2.3.4\n" + secret + "\n")
    with pytest.raises(ListError) as e:
        load_list_file(str(bad), "u32")
    assert str(e.value).startswith(f"{bad}:2: not an integer: 'root:$6$")
    assert secret not in str(e.value) and len(str(e.value)) < len(str(bad)) + 80
    with pytest.raises(ValueError) as e:
        parse_value("300.1.1.1" + "9" * 100, "u32")
    assert len(str(e.value)) < 80
