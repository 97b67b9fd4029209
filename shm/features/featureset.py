"""FeatureSet: the handle the rule compiler and the workers use.

Built once from the specs; owns one uint64 array per feature table, list and state table,
plus the control array (global halt). ``alloc(name, nwords)`` provides each array: the
default allocates process memory; the engine passes a function that creates or attaches a
POSIX shared-memory segment (zeroed on creation) and returns a uint64 view of it.

For each name the expression may use, ``binding(name)`` returns a ``Binding`` telling the
compiler: the type the expression sees, the kernel argument (array) name, and ready-made
source snippets for the read, the update and the prefetch. The generated kernel takes the
arrays in ``arg_names()`` order, passed as ``arrays()``. See docs/FEATURES.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shm.features import lists as L
from shm.features import table as T
from shm.features.keys import key_from_python
from shm.features.spec import FeatureSpec, Specs
from shm.features.state import CONTROL_WORDS, STATE_NAMES, _halt_set, _set_state, state_full_error
from shm.schema import Schema

IMPORTS = (
    "import numpy as np",
    "from shm.features.keys import _key_int, _key_bytes, _key_pair",
    "from shm.features.windows import (_read_count, _update_count, _read_sum, _update_sum, "
    "_read_avg, _update_avg, _read_min, _update_min, _read_max, _update_max, "
    "_read_update_count, _read_update_sum, _read_update_avg, _read_update_min, _read_update_max)",
    "from shm.features.distinct import _read_distinct, _update_distinct, _read_update_distinct",
    "from shm.features.scalar import (_read_age, _update_age, _read_last, _update_last, "
    "_read_update_age, _read_update_last)",
    "from shm.features.state import _read_state, _halt_get",
    "from shm.features.lists import _list_contains",
    "from shm.features.table import _prefetch_key, _prefetch_slot",
)
CONSTANTS = dict(STATE_NAMES)           # ACTIVE=0 REDUCING=1 HALTED=2, folded by the compiler
CONTROL_ARG = "fs_control"


def default_alloc(name: str, nwords: int) -> tuple[np.ndarray, bool]:
    """Process-local zeroed, 64 B aligned buffer. Returns (array, created)."""
    raw = np.zeros(nwords + 8, dtype=np.uint64)
    off = (-raw.ctypes.data % 64) // 8
    return raw[off:off + nwords], True


def encode_src(expr: str, schema: Schema, fname: str) -> str:
    """Source that encodes the value of schema field ``fname`` (held in ``expr``) to u64."""
    f = schema.field(fname)
    return f"_key_bytes({expr}, {f.size})" if f.kind == "bytes" else f"_key_int({expr})"


@dataclass(frozen=True)
class Binding:
    name: str
    what: str                     # 'feature' | 'list' | 'state' | 'halt'
    kind: str                     # feature kind, list value type, 'state' or 'halt'
    expr_type: str                # 'int' | 'float' | 'bool'
    arg: str                      # kernel argument name of the array
    consts: str                   # literal configuration arguments, already joined
    key_src: str                  # key expression in terms of `{rec}` (empty for list/halt)
    value_src: str                # value expression in terms of `{rec}` (feature 'of')
    time_src: str                 # now-ms expression in terms of `{rec}` and `{arrival_ms}`
    update: str                   # 'always' | 'unless_blocked' | '' (not updated by events)

    def emit_read(self, rec: str = "rec", arrival_ms: str = "arrival_ms") -> str:
        """Expression of the feature value for the event in variable ``rec``."""
        k = self.key_src.format(rec=rec)
        if self.what == "halt":
            return f"_halt_get({self.arg})"
        if self.what == "state":
            return f"_read_state({self.arg}, {self.consts}, {k})"
        now = self.time_src.format(rec=rec, arrival_ms=arrival_ms)
        v = self.value_src.format(rec=rec)
        if self.kind in ("age",):
            return f"_read_age({self.arg}, {self.consts}, {k}, {now})"
        if self.kind == "last":
            return f"_read_last({self.arg}, {self.consts}, {k}, {now})"
        return f"_read_{self.kind}({self.arg}, {self.consts}, {k}, {now}, {v})"

    def emit_update(self, rec: str = "rec", arrival_ms: str = "arrival_ms") -> str:
        """Statement expression committing the event (returns a status code)."""
        k = self.key_src.format(rec=rec)
        now = self.time_src.format(rec=rec, arrival_ms=arrival_ms)
        v = self.value_src.format(rec=rec)
        if self.kind == "age":
            return f"_update_age({self.arg}, {self.consts}, {k}, {now})"
        if self.kind == "last":
            return f"_update_last({self.arg}, {self.consts}, {k}, {now}, {v})"
        return f"_update_{self.kind}({self.arg}, {self.consts}, {k}, {now}, {v})"

    def can_fuse(self) -> bool:
        """True if the read and the update may be one call (``emit_read_update``) at read time:
        the update does not depend on the decision (update: always)."""
        return self.what == "feature" and self.update == "always"

    def emit_read_update(self, rec: str = "rec", arrival_ms: str = "arrival_ms") -> str:
        """Expression: the same value as emit_read, committing the event in the same lock
        (half the lock operations). Only when can_fuse(); then emit no separate update."""
        if not self.can_fuse():
            raise ValueError(f"feature {self.name}: kind={self.kind} update={self.update} cannot fuse")
        k = self.key_src.format(rec=rec)
        now = self.time_src.format(rec=rec, arrival_ms=arrival_ms)
        v = self.value_src.format(rec=rec)
        if self.kind == "age":
            return f"_read_update_age({self.arg}, {self.consts}, {k}, {now})"
        return f"_read_update_{self.kind}({self.arg}, {self.consts}, {k}, {now}, {v})"

    def emit_contains(self, value_expr: str, value_type: str) -> str:
        """``value_expr in <list>``; value_type is the schema type of the left operand."""
        enc = f"_key_bytes({value_expr}, {value_type[5:]})" if value_type.startswith("bytes") \
            else f"_key_int({value_expr})"
        return f"_list_contains({self.arg}, {enc})"

    def emit_prefetch(self, rec: str = "rec", stage: int = 1) -> str:
        """Stage 1: prefetch the key's home slot; stage 2 (a second pass over the block, once
        the home slots are in): walk to the key's own slot and prefetch it (table.py)."""
        cap, sw, probe = self.consts.split(", ")[:3]
        k = self.key_src.format(rec=rec)
        if stage == 1:
            return f"_prefetch_key({self.arg}, {k}, {cap}, {sw})"
        return f"_prefetch_slot({self.arg}, {k}, {cap}, {sw}, {probe})"


def _key_src(schema: Schema, fields: tuple[str, ...]) -> str:
    parts = [encode_src("{rec}." + f, schema, f) for f in fields]
    return parts[0] if len(parts) == 1 else f"_key_pair({parts[0]}, {parts[1]})"


def _feature_binding(fs: FeatureSpec, schema: Schema) -> Binding:
    consts = [fs.capacity, fs.slot_words, fs.probe_len]
    if fs.kind not in ("age", "last"):
        consts += [fs.nbuckets, fs.bucket_ms]
    if fs.kind == "distinct":
        consts.append(fs.registers.bit_length() - 1)
    if fs.of is None:
        value = "0.0"
    elif fs.kind == "distinct":
        value = encode_src("{rec}." + fs.of, schema, fs.of)
    else:
        value = "float({rec}." + fs.of + ")"
    t = "{arrival_ms}" if fs.time == "arrival" else "np.int64({rec}." + fs.time + ")"
    now = f"min(max(0, {t}), {T.MAX_TIME_MS})"         # what the slot meta's recency holds
    return Binding(fs.name, "feature", fs.kind, fs.expr_type, f"ft_{fs.name}",
                   ", ".join(str(c) for c in consts), _key_src(schema, fs.key), value, now, fs.update)


def array_words(specs: Specs) -> dict[str, int]:
    """The u64 words of every array a FeatureSet asks ``alloc`` for, by argument name."""
    out = {f"ft_{fs.name}": T.table_words(fs.capacity, fs.slot_words) for fs in specs.features}
    out.update({f"fl_{ls.name}": L.list_words(ls.capacity, L.value_width(ls.type)) for ls in specs.lists})
    out.update({f"st_{ss.name}": T.table_words(ss.capacity, ss.slot_words) for ss in specs.states})
    out[CONTROL_ARG] = CONTROL_WORDS
    return out


class FeatureSet:
    """Owns the feature tables, lists, state tables and control array of one engine."""

    def __init__(self, specs: Specs, schema: Schema, alloc=default_alloc, load_lists: bool = True):
        self.specs = specs
        self.schema = schema
        self._arrays: dict[str, np.ndarray] = {}
        self.bindings: dict[str, Binding] = {}
        words = array_words(specs)
        for fs in specs.features:
            self._table(f"ft_{fs.name}", fs.capacity, fs.slot_words, alloc, words)
            self.bindings[fs.name] = _feature_binding(fs, schema)
        for ls in specs.lists:
            arr, created = alloc(f"fl_{ls.name}", words[f"fl_{ls.name}"])
            if created:
                L.init_list(arr, ls.capacity, L.value_width(ls.type))
                if load_lists and ls.file:
                    L.replace_list(arr, L.load_list_file(ls.file, ls.type))
            self._arrays[f"fl_{ls.name}"] = arr
            self.bindings[ls.name] = Binding(ls.name, "list", ls.type, "bool", f"fl_{ls.name}",
                                             "", "", "", "", "")
        for ss in specs.states:
            self._table(f"st_{ss.name}", ss.capacity, ss.slot_words, alloc, words)
            self.bindings[ss.name] = Binding(ss.name, "state", "state", "int", f"st_{ss.name}",
                                             f"{ss.capacity}, {ss.slot_words}, {ss.probe_len}",
                                             _key_src(schema, (ss.key,)), "", "", "")
        arr, _ = alloc(CONTROL_ARG, words[CONTROL_ARG])
        self._arrays[CONTROL_ARG] = arr
        self.bindings["global_halt"] = Binding("global_halt", "halt", "halt", "bool", CONTROL_ARG,
                                               "", "", "", "", "")

    def _table(self, arg: str, capacity: int, slot_words: int, alloc, words: dict) -> None:
        arr, created = alloc(arg, words[arg])
        if created:
            T.init_table(arr, capacity, slot_words)
        else:
            T.check_table(arr, capacity, slot_words)
        self._arrays[arg] = arr

    # --- compiler contract -------------------------------------------------------------
    def arg_names(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(self._arrays.values())

    def binding(self, name: str) -> Binding:
        return self.bindings[name]

    # --- admin plane -------------------------------------------------------------------
    def array(self, arg: str) -> np.ndarray:
        return self._arrays[arg]

    def replace_list(self, name: str, values) -> int:
        return L.replace_list(self._arrays[f"fl_{name}"], values)

    def set_state(self, name: str, key, state: int, now_ms: int = 0) -> None:
        """Set the state of one key (a Python value of the state's key field: int or bytes)."""
        ss = next(s for s in self.specs.states if s.name == name)
        if state not in STATE_NAMES.values():
            raise ValueError(f"state.{name}: state={state} is not ACTIVE/REDUCING/HALTED")
        k = key_from_python(key, self.schema.field(ss.key).type)
        rc = _set_state(self._arrays[f"st_{name}"], ss.capacity, ss.slot_words, ss.probe_len,
                        np.uint64(k), state, now_ms)
        if rc < 0:
            raise state_full_error(name, key)

    def set_halt(self, on: bool) -> None:
        _halt_set(self._arrays[CONTROL_ARG], on)

    # --- reporting ---------------------------------------------------------------------
    def counters(self) -> dict[str, dict]:
        return {n: T.counters(a) for n, a in self._arrays.items() if n.startswith(("ft_", "st_"))}

    def memory_report(self) -> str:
        lines = [f"{'name':<24}{'kind':<10}{'B/key':>7}{'capacity':>12}{'MiB':>10}"]
        total = 0
        for fs in self.specs.features:
            nb = self._arrays[f"ft_{fs.name}"].nbytes
            total += nb
            lines.append(f"{fs.name:<24}{fs.kind:<10}{fs.bytes_per_key:>7}{fs.capacity:>12}{nb / 2**20:>10.1f}")
        for ss in self.specs.states:
            nb = self._arrays[f"st_{ss.name}"].nbytes
            total += nb
            lines.append(f"{ss.name:<24}{'state':<10}{8 * ss.slot_words:>7}{ss.capacity:>12}{nb / 2**20:>10.1f}")
        for ls in self.specs.lists:
            nb = self._arrays[f"fl_{ls.name}"].nbytes
            total += nb
            lines.append(f"{ls.name:<24}{'list':<10}{16 * L.value_width(ls.type):>7}{ls.capacity:>12}{nb / 2**20:>10.1f}")
        lines.append(f"{'total':<53}{total / 2**20:>10.1f}")
        return "\n".join(lines)
