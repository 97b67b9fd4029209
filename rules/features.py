"""Features, lists, account state and the global halt in rule expressions (issue 4).

Adapts an ``shm.features.featureset.FeatureSet`` to the compiler's extension point
(rules.symbols) and plans the per-event feature code of the generated kernel:

- every name the FeatureSet binds becomes a symbol: a feature, a state or ``global_halt``
  an ``FeatureRead`` (ExtValue), a list a ``ListSet`` (ExtSet); ``ACTIVE``, ``REDUCING``,
  ``HALTED`` are integer constants (folded);
- per event the kernel computes each feature/state/halt that some rule reads ONCE, before
  the rules (``fv_<name>`` locals passed to the chunk functions): an ``update: always``
  feature with the fused read+update (``emit_read_update``), an ``unless_blocked`` one with
  a plain read and, after the decision, ``emit_update`` unless the action is BLOCK;
- features that no rule reads are still UPDATED for every event (after the decision, same
  ``update`` policy): the tables are shared by every ruleset, and a later ruleset (a reload)
  may read them; skipping them would make the feature depend on which ruleset was serving;
- ``apply_updates`` (a second njit function of the same module) commits exactly the kernel's
  updates given the recorded actions: recovery and replay rebuild tables with it.

Time: ``arrival_ms = arrival_ns[i] // 1_000_000`` (the FeatureSet clamps it at 0).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import shm
from rules.loader import ConstantDef
from rules.symbols import ExtSet, ExtValue
from shm.features.featureset import CONSTANTS, IMPORTS, FeatureSet, default_alloc
from shm.features.keys import key_from_python
from shm.features.spec import specs_from_config

# every shm source the generated feature code compiles from (tests/rules/test_feature_batches.py
# checks the list against the imports), relative to shm/
_FEATURE_SOURCES = ("features/windows.py", "features/distinct.py", "features/scalar.py",
                    "features/table.py", "features/state.py", "features/lists.py", "features/keys.py",
                    "features/hll.py", "features/_atomics.py", "features/featureset.py",
                    "atomics.py", "descriptor.py")
ARRIVAL_MS = "arrival_ms"
PREFETCH_EVENTS = 64             # events per prefetch block (docs/FEATURES.md: batches of 64)
REC = "ev"


class FeatureRead(ExtValue):
    """A feature, an account state or the global halt: one value per event (``fv_<name>``)."""
    pure = True                      # a local variable: evaluating it never fails

    def __init__(self, binding):
        self.binding = binding
        self.name = binding.name
        self.type = binding.expr_type
        self.var = f"fv_{binding.name}"

    def kernel_load(self, ev_var: str, i_var: str) -> str:
        return self.var

    def reference_value(self, event, state):
        if state is None:
            raise TypeError(f"{self.name}: features need a state (rules.feature_model.FeatureModel)")
        return state.value(self.name)


class ListSet(ExtSet):
    """A list (``x in blocked_ips``): membership in the shared list array."""
    pure = True

    def __init__(self, binding):
        self.binding = binding
        self.name = binding.name
        self.element_type = "bytes" if binding.kind.startswith("bytes") else "int"
        self.kernel_args = (binding.arg,)

    @property
    def kind(self) -> str:
        return self.binding.kind

    def accepts_width(self, width: int) -> bool:
        """A bytes value of ``width`` encodes like this list's values (both packed: <= 8
        bytes, or both hashed: longer)."""
        return self.element_type == "bytes" and (width <= 8) == (int(self.kind[5:]) <= 8)

    def kernel_contains(self, value_code: str) -> str:
        return self.binding.emit_contains(value_code, "i64")

    def kernel_contains_bytes(self, node) -> str:
        """``node`` is a bytes Field (read from the record) or a bytes Const (encoded now)."""
        if getattr(node, "name", ""):
            return self.binding.emit_contains(f"{REC}.{node.name}", node.spec.type)
        return f"_list_contains({self.binding.arg}, np.uint64({key_from_python(node.value, f'bytes{node.width}')}))"

    def reference_contains(self, value, state) -> bool:
        if state is None:
            raise TypeError(f"{self.name}: lists need a state (rules.feature_model.FeatureModel)")
        return state.contains(self.name, value)


def feature_symbols(fs) -> dict:
    """name -> symbol for every name ``fs`` binds, plus the state constants."""
    out: dict = {k: ConstantDef(k, v, 0, 0) for k, v in CONSTANTS.items()}
    for name, b in fs.bindings.items():
        out[name] = ListSet(b) if b.what == "list" else FeatureRead(b)
    return out


def feature_sources() -> list[Path]:
    return [Path(shm.__file__).parent / f for f in _FEATURE_SOURCES]


def specs_digest(fs) -> str:
    """Hash of the feature specs and the feature primitives' sources: part of the kernel
    source, hence of its cache key (Numba's cache does not see changes in called modules)."""
    h = hashlib.blake2b(repr(fs.specs).encode(), digest_size=8)
    for f in feature_sources():
        h.update(f.read_bytes())
    return h.hexdigest()


class FeaturePlan:
    """The feature part of one generated module, for the rules that read ``read_names``."""

    def __init__(self, fs, read_names):
        self.fs = fs
        self.imports = IMPORTS
        self.kernel_args = fs.arg_names()
        self.digest = specs_digest(fs)
        read = set(read_names)
        self.reads = [b for n, b in fs.bindings.items() if n in read and b.what != "list"]
        self.lists = [b for n, b in fs.bindings.items() if n in read and b.what == "list"]
        self.chunk_args = tuple(f"fv_{b.name}" for b in self.reads) + tuple(b.arg for b in self.lists)
        self.features = [b for b in fs.bindings.values() if b.what == "feature"]

    def prefetched(self) -> list:
        """Bindings whose key slot the batch prefetch touches: every feature, read states."""
        if not PREFETCH_EVENTS:
            return []
        return self.features + [b for b in self.reads if b.what == "state"]

    def read_lines(self) -> list[str]:
        """Statements computing every read value of the current event ``ev`` (first, every
        PREFETCH_EVENTS events: prefetch the next block's table slots, so misses overlap)."""
        out = []
        if self.prefetched():
            args = ", ".join(b.arg for b in self.prefetched())
            out += [f"if i % {PREFETCH_EVENTS} == 0:",
                    f"    _prefetch_block(events, i, min(events.shape[0], i + {PREFETCH_EVENTS}), {args})"]
        out += [f"{ARRIVAL_MS} = arrival_ns[i] // 1000000"] if self.features else []
        for b in self.reads:
            if b.what == "feature":
                src = b.emit_read_update(REC, ARRIVAL_MS) if b.can_fuse() else b.emit_read(REC, ARRIVAL_MS)
            elif b.what == "state":
                src = b.emit_read(REC)
            else:
                src = b.emit_read()
            cast = {"int": "np.int64", "float": "np.float64"}.get(b.expr_type, "")
            out.append(f"fv_{b.name} = {cast}({src})")
        return out

    def update_lines(self, action_var: str, fused: bool) -> list[str]:
        """Statements committing the event after the decision in ``action_var``; ``fused``:
        skip the features already committed by their fused read."""
        done = {b.name for b in self.reads if b.what == "feature" and b.can_fuse()} if fused else set()
        out = []
        for b in self.features:
            if b.name in done:
                continue
            if b.update == "unless_blocked":
                out.append(f"if {action_var} != 2:")
                out.append(f"    {b.emit_update(REC, ARRIVAL_MS)}")
            else:
                out.append(b.emit_update(REC, ARRIVAL_MS))
        return out

    def prefetch_source(self) -> list[str]:
        if not self.prefetched():
            return []
        args = ", ".join(b.arg for b in self.prefetched())
        out = ["@njit(**_OPTS)", f"def _prefetch_block(events, lo, hi, {args}):"]
        for stage in (1, 2):            # home slots of the whole block, then the keys' own
            out += ["    for i in range(lo, hi):", f"        {REC} = events[i]"] \
                + [f"        {b.emit_prefetch(REC, stage)}" for b in self.prefetched()]
        return out + ["", ""]

    def apply_updates_source(self) -> list[str]:
        args = "".join(f", {a}" for a in self.kernel_args)
        body = [
            "_USIG = numba.void(numba.types.Array(numba.from_dtype(EVENT_DTYPE), 1, 'A'),",
            "                   numba.types.Array(numba.int64, 1, 'A'),",
            "                   numba.types.Array(numba.uint8, 1, 'A')"
            + "".join(", numba.uint64[::1]" for _ in self.kernel_args) + ")",
            "",
            "",
            "@njit(_USIG, **_OPTS)",
            f"def _apply_updates(events, arrival_ns, actions{args}):",
            "    n = events.shape[0]",
            "    if arrival_ns.shape[0] < n or actions.shape[0] < n:",
            "        raise ValueError('update kernel: an array is shorter than the batch')",
            "    for i in range(n):",
            f"        {REC} = events[i]",
            "        action = actions[i]",
        ]
        lines = ([f"{ARRIVAL_MS} = arrival_ns[i] // 1000000"] if self.features else []) \
            + self.update_lines("action", fused=False)
        body += ["        " + s for s in lines] or ["        pass"]
        if len(lines) <= 1:
            body.append("        pass")
        return body


def feature_set_for(cfg, alloc=None):
    """A FeatureSet of ``cfg``'s features/lists/state with process-local tables (or
    ``alloc``): what check, test-rules and replay compile against. Never None: even without
    features it binds ``global_halt``."""
    return FeatureSet(specs_from_config(cfg), cfg.schema, alloc=alloc or default_alloc)
