"""Name resolution for rule expressions: the one place that knows what a name means.

A name is a schema field, a constant of the rule's file, or an *extension symbol*. Extension
symbols are the hook for the features work (issue 4): a feature such as ``txn_count_1m``
is an ``ExtValue`` and a list such as ``blocked_ips`` an ``ExtSet``. Each says its type, the
extra kernel arguments it needs (state arrays in shared memory) and how to read itself in
generated code and in the reference evaluator. The type checker, the generator and the
reference evaluator only talk to these objects, so adding features adds no compiler pass.
"""
from __future__ import annotations

from typing import Mapping

from shm.schema import Schema

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def field_type(spec) -> str:
    if spec.kind == "bytes":
        return "bytes"
    if spec.kind == "float":
        return "float"
    if spec.kind == "bool":
        return "bool"
    if spec.type == "u64":
        return "u64"
    return "int"


class ExtValue:
    """A per-event value computed outside the event record (a feature, account state).

    type: 'bool' | 'int' | 'float'. kernel_args: names of extra kernel arguments, appended
    after ``errors`` in this order (e.g. a state array). kernel_load returns Python source
    of an expression reading the value for event ``i_var`` from ``ev_var`` and those
    arguments. reference_value reads it for the oracle from ``state`` (any object the
    caller passes to CompiledRuleset.reference).
    """
    type = "int"
    kernel_args: tuple[str, ...] = ()

    def kernel_load(self, ev_var: str, i_var: str) -> str:
        raise NotImplementedError

    def reference_value(self, event: Mapping, state) -> object:
        raise NotImplementedError


class ExtSet:
    """A named set for ``x in name`` (IP/card lists): element_type 'int' or 'bytes'."""
    element_type = "int"
    kernel_args: tuple[str, ...] = ()

    def kernel_contains(self, value_code: str) -> str:
        raise NotImplementedError

    def reference_contains(self, value, state) -> bool:
        raise NotImplementedError


class Symbols:
    """Resolves names for one rule file: fields, that file's constants, extensions."""

    def __init__(self, schema: Schema, constants: Mapping[str, object] | None = None,
                 extensions: Mapping[str, object] | None = None):
        self.schema = schema
        self.fields = {f.name: f for f in schema.fields}
        self.constants = dict(constants or {})     # name -> loader.ConstantDef
        self.extensions = dict(extensions or {})   # name -> ExtValue | ExtSet

    def resolve(self, name: str):
        """FieldSpec, ConstantDef, ExtValue, ExtSet or None."""
        if name in self.fields:
            return self.fields[name]
        if name in self.constants:
            return self.constants[name]
        return self.extensions.get(name)

    def names(self) -> list[str]:
        return list(self.fields) + list(self.constants) + list(self.extensions)
