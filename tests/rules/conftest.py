"""Shared fixtures: a schema with every field type, rule-file writing, one kernel cache."""
from __future__ import annotations

import textwrap

import pytest

from shm.schema import Schema

ALL_TYPES = {
    "k": "u64", "u8f": "u8", "u16f": "u16", "u32f": "u32", "u64f": "u64",
    "i8f": "i8", "i16f": "i16", "i32f": "i32", "i64f": "i64",
    "f32f": "f32", "f64f": "f64", "flag": "bool", "code": "bytes3", "name": "bytes10",
}


@pytest.fixture(scope="session")
def all_schema() -> Schema:
    return Schema.build(ALL_TYPES, "k")


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory):
    """One cache directory for the whole session: each kernel compiles once."""
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture
def write_rules(tmp_path):
    """write_rules(text, name='r.yaml') -> path of a dedented YAML rule file."""
    def write(text: str, name: str = "r.yaml") -> str:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        return str(p)
    return write


def one_rule(when: str, **extra) -> str:
    """A rule file with a single rule ``r1`` whose when is on line 4, column 11."""
    lines = ["ruleset: t", "version: 1", "rules:", f"  - {{id: r1, when: {when}, action: block"]
    lines[-1] += "".join(f", {k}: {v}" for k, v in extra.items()) + "}"
    return "\n".join(lines) + "\n"
