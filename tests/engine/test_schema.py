"""The schema dtype: aligned, padded to 8, hash stable, C header matches numpy offsets."""
import re

import numpy as np
import pytest

from shm.schema import Schema, SchemaError

ALL = {"a": "u8", "b": "u64", "c": "i16", "d": "f32", "e": "bytes3", "f": "bool", "g": "i64",
       "h": "u16", "i": "u32", "j": "i8", "k": "i32", "l": "f64", "m": "bytes64"}


def test_every_type_and_alignment():
    s = Schema.build(ALL, "b")
    for f in s.fields:
        off = s.dtype.fields[f.name][1]
        align = 1 if f.kind in ("bytes", "bool") else f.size
        assert off % align == 0, f.name
    assert s.record_size % 8 == 0
    assert s.field("e").kind == "bytes" and s.field("e").size == 3
    assert s.field("c").lo == -32768 and s.field("b").hi == 2**64 - 1


def test_hash_is_stable_and_sensitive():
    a = Schema.build(ALL, "b")
    assert a.hash == Schema.build(dict(ALL), "b").hash
    assert a.hash != Schema.build({**ALL, "a": "u16"}, "b").hash
    assert a.hash != Schema.build(ALL, "g").hash


def test_c_header_offsets_match_numpy():
    s = Schema.build(ALL, "b")
    h = s.c_header()
    for f in s.fields:
        m = re.search(rf"\b{f.name}(\[\d+\])?;\s+/\* offset (\d+)", h)
        assert m and int(m.group(2)) == s.dtype.fields[f.name][1]
    assert f"RISK_RECORD_SIZE {s.record_size}" in h


@pytest.mark.parametrize("fields,key", [({}, "schema.fields"), ({"A": "u8"}, "schema.fields"),
                                        ({"a": "bytes0"}, "schema.fields.a"),
                                        ({"a": 7}, "schema.fields.a")])
def test_bad_schema(fields, key):
    with pytest.raises(SchemaError, match=re.escape(key)):
        Schema.build(fields, "a")


def test_c_header_compiles_to_the_same_layout(tmp_path):
    """A C compiler agrees with numpy on every offset and the record size."""
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    s = Schema.build(ALL, "b")
    src = tmp_path / "t.c"
    prints = "".join(f'printf("{f.name} %zu\\n", offsetof(struct risk_event, {f.name}));' for f in s.fields)
    src.write_text(s.c_header() + "#include <stdio.h>\n#include <stddef.h>\nint main(void){"
                   + prints + 'printf("size %zu\\n", sizeof(struct risk_event)); return 0;}\n')
    subprocess.run([cc, "-std=c11", "-o", str(tmp_path / "t"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "t")], check=True, capture_output=True, text=True).stdout
    got = dict(line.split() for line in out.splitlines())
    assert int(got.pop("size")) == s.record_size
    assert {k: int(v) for k, v in got.items()} == {f.name: s.dtype.fields[f.name][1] for f in s.fields}


@pytest.mark.parametrize("compiler,std,ext", [("gcc", "-std=c11", "c"), ("g++", "-std=c++11", "cpp")])
def test_c_header_command_compiles_as_c_and_cpp(tmp_path, capsys, compiler, std, ext):
    """`risk-engine schema --c-header` (issue 25): included twice (its include guard) by a C
    and a C++ file, every offset and the size asserted statically against numpy's layout."""
    import shutil
    import subprocess
    from engine.cli import main
    from shm.runtime.config import load_config
    cc = shutil.which(compiler)
    if cc is None:
        pytest.fail(f"the system compiler {compiler} is not installed (Debian: build-essential)")
    assert main(["schema", "--c-header"]) == 0
    (tmp_path / "risk_event.h").write_text(capsys.readouterr().out)
    s = load_config(None).schema
    check = "static_assert" if ext == "cpp" else "_Static_assert"
    asserts = "".join(f'{check}(offsetof(struct risk_event, {f.name}) == {s.dtype.fields[f.name][1]}, "{f.name}");\n'
                      for f in s.fields)
    src = tmp_path / f"t.{ext}"
    src.write_text('#include "risk_event.h"\n#include "risk_event.h"\n#include <stddef.h>\n' + asserts
                   + f'{check}(sizeof(struct risk_event) == {s.record_size}, "size");\n'
                   + f'{check}(RISK_RECORD_SIZE == {s.record_size}, "macro");\n'
                   + "int main(void) { struct risk_event e; e.ip = 0x0A000001u; return (int)(e.ip >> 31); }\n")
    r = subprocess.run([cc, std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", "-o",
                        str(tmp_path / "t.o"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
