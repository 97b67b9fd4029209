"""compile_ruleset: the chain of passes, and the CompiledRuleset it returns.

load (YAML) -> parse -> allowlist -> type-check -> fold -> generate -> write + import
(compile or load from Numba's cache). The map rule id -> index -> kernel lives here and
nowhere else: a rule's index is its position among the enabled rules, files in the order
given. Compilation never runs rule text and is bounded by the limits in rules.parse.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numba
import numpy as np

from shm.types import MAX_FIRED, MAX_RULES, RESPONSE_SLOT_DTYPE, Action
from rules import ir
from rules.cache import default_cache_dir, import_module, module_name, source_hash, write_module
from rules.diagnostics import Diagnostic, RulesetError, Sink
from rules.features import FeaturePlan, FeatureRead, ListSet, feature_symbols
from rules.fold import FoldError, fold
from rules.kernel_source import KernelRule, generate
from rules.loader import ConstantDef, RuleSource, load_rule_file
from rules.parse import ExprError, allowlist, check_depth, parse_expr
from rules.reference import EvalError, evaluate, event_env
from rules.symbols import Symbols
from rules.typecheck import typecheck



@dataclass(frozen=True)
class Decision:
    action: int
    score: float
    fired: frozenset
    errors: frozenset       # rule indexes whose evaluation failed


def compile_expr(text: str, symbols: Symbols) -> tuple[ir.Node | None, list[ExprError]]:
    """parse -> allowlist -> type-check -> fold for one condition; (IR, errors)."""
    try:
        tree = parse_expr(text)
        check_depth(tree)
    except ExprError as e:
        return None, [e]
    errs = allowlist(tree)
    if errs:
        return None, errs
    node, errs = typecheck(tree, symbols)
    if errs:
        return None, errs
    try:
        return fold(node), []
    except FoldError as e:
        return None, [ExprError(e.pos[0], e.pos[1], e.message)]


def _thresholds(thresholds) -> dict:
    th = dict(thresholds.items() if isinstance(thresholds, Mapping) else thresholds)
    for k, v in th.items():
        if k not in ("review", "block") or isinstance(v, bool) or not isinstance(v, (int, float)) \
                or not math.isfinite(v):
            raise ValueError(f"thresholds: {k}={v!r} (allowed keys review, block with finite numbers)")
    return {k: float(v) for k, v in th.items()}


def check_ruleset(files: Sequence[str], schema, extensions: Mapping[str, object] | None = None,
                  texts: Sequence[str] | None = None):
    """Passes load..fold for every rule; (loaded files, [(RuleSource, IR)] of enabled rules).
    ``texts``: the files' contents, already read (then ``files`` only name them).

    Raises RulesetError listing every problem. Never generates or compiles code.
    """
    if not files:
        raise ValueError("files: at least one rule file is required")
    if texts is not None and len(texts) != len(files):
        raise ValueError(f"texts: {len(texts)} texts for {len(files)} rule files")
    diags: list[Diagnostic] = []
    loaded = []
    for i, f in enumerate(files):
        rf = load_rule_file(str(f), Sink(str(f), out=diags), None if texts is None else texts[i])
        if rf is not None:
            loaded.append(rf)
    seen: dict[str, RuleSource] = {}
    compiled: list[tuple[RuleSource, ir.Node]] = []
    for rf in loaded:
        for name, c in rf.constants.items():
            if name in schema.names:
                diags.append(Diagnostic(rf.path, c.line, c.col, "", f"constant {name} shadows the schema field {name}"))
        for r in rf.rules:
            if r.id in seen:
                first = seen[r.id]
                diags.append(Diagnostic(r.file, r.line, r.col, r.id,
                                        f"duplicate rule id (first defined at {first.file}:{first.line})"))
                continue
            seen[r.id] = r
            sym = Symbols(schema, r.constants, extensions)
            node, errs = compile_expr(r.when, sym)
            for e in errs:
                line, col = r.when_map.at(r.when, e.lineno, e.col)
                diags.append(Diagnostic(r.file, line, col, r.id, e.message))
            if node is not None and r.enabled:
                compiled.append((r, node))
    if len(compiled) > MAX_RULES:
        diags.append(Diagnostic(str(files[0]), 0, 0, "", f"{len(compiled)} enabled rules (limit {MAX_RULES})"))
    if diags:
        raise RulesetError(diags)
    return loaded, compiled


def _read_names(compiled) -> list[str]:
    """Names of the features/lists/state the rules use (rules.features symbols)."""
    names = []
    for _, node in compiled:
        for m in ir.walk(node):
            sym = getattr(m, "symbol", None)
            if isinstance(sym, (FeatureRead, ListSet)) and sym.name not in names:
                names.append(sym.name)
    return names


def compile_ruleset(files: Sequence[str], schema, *, thresholds=(), on_error: str = "skip",
                    cache_dir=None, extensions: Mapping[str, object] | None = None,
                    features=None, texts: Sequence[str] | None = None) -> "CompiledRuleset":
    """Compile rule files into one kernel; raise RulesetError listing every problem.
    ``texts``: the files' contents as already read (check_ruleset); ``files`` then only name
    them, so the same text under the same path gives the same kernel (cache key).

    ``features``: an shm.features.featureset.FeatureSet (or None): its names become usable
    in rules and its arrays kernel arguments (``feature_args``; rules/features.py).

    Safe to call off the hot path while another ruleset serves: it touches no shared state
    besides the cache directory (files published atomically).
    """
    if on_error not in ("skip", "fire"):
        raise ValueError(f"on_error={on_error!r} (allowed: skip, fire)")
    th = _thresholds(thresholds)
    plan = None
    if features is not None:
        extensions = {**feature_symbols(features), **(extensions or {})}
    loaded, compiled = check_ruleset(files, schema, extensions, texts)
    if features is not None:
        plan = FeaturePlan(features, _read_names(compiled))
        extensions = {k: v for k, v in extensions.items() if not isinstance(v, (FeatureRead, ListSet, ConstantDef))}
    label = "+".join(f"{rf.name}@{rf.version}" for rf in loaded)
    krules = [KernelRule(i, r.id, f"{Path(r.file).name}:{r.line}", node, r.action, r.score,
                         r.mode == "enforce") for i, (r, node) in enumerate(compiled)]
    ext_args = tuple(dict.fromkeys(a for s in (extensions or {}).values() for a in s.kernel_args))
    source = generate(krules, len(krules), schema, th, on_error, label, ext_args, plan)
    t0 = time.perf_counter()
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    name = module_name(source_hash(source), schema.hash, numba.__version__)
    path = write_module(cdir, name, source)
    mod = import_module(path, name)
    if mod.EVENT_DTYPE != schema.dtype:
        raise RuntimeError(f"kernel module {path}: EVENT_DTYPE does not match the schema dtype")
    return CompiledRuleset(
        name="+".join(rf.name for rf in loaded), version="+".join(str(rf.version) for rf in loaded),
        label=label, rule_ids=tuple(r.id for r, _ in compiled),
        modes=tuple(r.mode for r, _ in compiled), actions=tuple(r.action for r, _ in compiled),
        block_ttl_ms=tuple(r.block_ttl_ms for r, _ in compiled),
        scores=tuple(r.score for r, _ in compiled), reasons=tuple(r.reason for r, _ in compiled),
        where=tuple(f"{r.file}:{r.line}" for r, _ in compiled),
        n_rules=len(compiled), source_hash=name, kernel=mod._kernel, schema=schema,
        thresholds=th, on_error=on_error, module_path=str(path), import_s=time.perf_counter() - t0,
        conditions=tuple(node for _, node in compiled),
        feature_args=plan.kernel_args if plan else (), features=features,
        feature_arrays=features.arrays() if features is not None else (),
        update_kernel=getattr(mod, "_apply_updates", None))


@dataclass(frozen=True, eq=False)
class CompiledRuleset:
    """A compiled ruleset. Index i of every tuple describes rule index i of the kernel."""
    name: str
    version: str               # "7", or "7+3" for several files
    label: str                 # "payments@7+pretrade@3": carried by every decision
    rule_ids: tuple
    modes: tuple               # 'enforce' | 'shadow'
    actions: tuple             # shm.types.Action values
    scores: tuple
    reasons: tuple
    where: tuple               # "file:line" of each rule
    n_rules: int
    source_hash: str           # cache key (module name) of the generated kernel
    kernel: object             # raw njit: kernel(events, arrival_ns, out, bits, hits, errors, *feature_arrays)
    schema: object
    thresholds: dict = field(default_factory=dict)
    on_error: str = "skip"
    module_path: str = ""
    import_s: float = 0.0      # write + import (compile or cache load) wall time
    conditions: tuple = ()     # folded IR per rule (the reference evaluator's input)
    feature_args: tuple = ()   # names of the feature arrays after ``errors`` (FeatureSet.arg_names())
    features: object = None    # the FeatureSet compiled against (None: no features)
    feature_arrays: tuple = () # its arrays, in feature_args order (what the engine passes)
    update_kernel: object = None  # raw njit _apply_updates(events, arrival_ns, actions, *feature_arrays)
    block_ttl_ms: tuple = ()   # block_source ttl per rule (0: none); the worker flags enforce ones

    @property
    def entry(self):
        """The compiled entry point of the kernel's one signature, bypassing Numba's
        per-call argument typing (about 1 us less per call for structured arrays here).
        UNCHECKED: the caller guarantees the dtypes and layouts of ``kernel``'s contract
        (the engine's ring views); use ``kernel`` or ``evaluate`` otherwise."""
        return self.kernel.overloads[self.kernel.signatures[0]].entry_point

    @property
    def n_words(self) -> int:
        return max(1, (self.n_rules + 63) // 64)

    def index_of(self, rule_id: str) -> int:
        return self.rule_ids.index(rule_id)

    def new_buffers(self, n: int):
        """(out, bits, hits, errors) sized for ``n`` events."""
        return (np.zeros(n, RESPONSE_SLOT_DTYPE), np.zeros((n, self.n_words), np.uint64),
                np.zeros(self.n_rules, np.int64), np.zeros(self.n_rules, np.int64))

    def _arrival(self, arrival_ns, n: int) -> np.ndarray:
        if arrival_ns is None:
            return np.zeros(n, np.int64)
        a = np.asarray(arrival_ns)
        if a.dtype != np.int64 or a.ndim != 1 or a.shape[0] != n:
            raise TypeError(f"arrival_ns: expected int64[{n}], got {a.dtype}{a.shape}")
        return a

    def _feature_arrays(self, feature_arrays) -> tuple:
        fa = self.feature_arrays if feature_arrays is None else tuple(feature_arrays)
        if len(fa) != len(self.feature_args):
            raise TypeError(f"feature_arrays: expected {len(self.feature_args)} arrays {self.feature_args}, got {len(fa)}")
        return fa

    def apply_updates(self, events, arrival_ns, actions, *feature_arrays) -> None:
        """Commit every feature update of ``events`` exactly as the kernel would have after
        deciding ``actions`` (unless_blocked features skip BLOCK), without evaluating rules:
        recovery and replay. ``feature_arrays`` default to the compile-time FeatureSet's."""
        if self.update_kernel is None:
            return
        n = events.shape[0]
        act = np.asarray(actions)
        if act.dtype != np.uint8:
            act = act.astype(np.uint8)
        if act.shape != (n,):
            raise TypeError(f"actions: expected {n} actions, got shape {act.shape}")
        self.update_kernel(events, self._arrival(arrival_ns, n), act,
                           *self._feature_arrays(feature_arrays or None))

    def evaluate(self, events, out=None, bits=None, hits=None, errors=None, arrival_ns=None,
                 feature_arrays=None):
        """Validate the arguments, run the kernel, return ``out``. Not for the hot path.
        ``arrival_ns`` defaults to zeros, ``feature_arrays`` to the compile-time FeatureSet's
        (the kernel updates those tables)."""
        if not isinstance(events, np.ndarray) or events.ndim != 1 or events.dtype != self.schema.dtype:
            raise TypeError(f"events: expected a 1-D array of the schema dtype, got {getattr(events, 'dtype', type(events))}")
        n = events.shape[0]
        arrival = self._arrival(arrival_ns, n)
        fa = self._feature_arrays(feature_arrays)
        o, b, h, e = self.new_buffers(n)
        out = o if out is None else out
        bits = b if bits is None else bits
        hits = h if hits is None else hits
        errors = e if errors is None else errors
        if out.dtype != RESPONSE_SLOT_DTYPE or out.ndim != 1 or out.shape[0] < n:
            raise TypeError(f"out: expected >= {n} RESPONSE_SLOT_DTYPE records")
        if bits.dtype != np.uint64 or bits.shape != (n, self.n_words) and not \
                (bits.ndim == 2 and bits.shape[0] >= n and bits.shape[1] == self.n_words):
            raise TypeError(f"bits: expected uint64[{n}, {self.n_words}], got {bits.dtype}{bits.shape}")
        if not bits.flags.c_contiguous:
            raise TypeError("bits: must be C-contiguous")
        for nm, a in (("hits", hits), ("errors", errors)):
            if a.dtype != np.int64 or a.shape != (self.n_rules,) or not a.flags.c_contiguous:
                raise TypeError(f"{nm}: expected C-contiguous int64[{self.n_rules}], got {a.dtype}{a.shape}")
        self.kernel(events, arrival, out[:n], bits[:n], hits, errors, *fa)
        return out

    def reference_decision(self, event, state=None) -> Decision:
        """The plain-Python oracle: same decision as the kernel, plus the failed rules."""
        env = event if isinstance(event, dict) else event_env(event, self.schema)
        fired, failed = [], []
        score, action = 0.0, int(Action.ALLOW)
        for i, cond in enumerate(self.conditions):
            try:
                f = bool(evaluate(cond, env, state))
            except EvalError:
                failed.append(i)
                f = self.on_error == "fire"
            if f:
                fired.append(i)
                if self.modes[i] == "enforce":
                    score += self.scores[i]
                    action = max(action, self.actions[i])
        if score >= self.thresholds.get("block", math.inf):
            action = max(action, int(Action.BLOCK))
        if score >= self.thresholds.get("review", math.inf):
            action = max(action, int(Action.REVIEW))
        return Decision(action, score, frozenset(fired), frozenset(failed))

    def slot_fired(self, fired) -> list[int]:
        """The rule indexes a response slot carries for the fired set ``fired`` (the oracle
        of the kernel's choice): all of them when they fit in MAX_FIRED, else the MAX_FIRED
        that matter most (enforce rules by action, most severe first, then score, highest
        first, then index; shadow rules last); ascending either way."""
        def rank(k):
            if self.modes[k] == "shadow":
                return (1, 0, 0.0, k)
            return (0, -int(self.actions[k]), -float(self.scores[k]), k)
        return sorted(sorted(fired, key=rank)[:MAX_FIRED])

    def reference(self, event, state=None) -> tuple[int, float, frozenset]:
        d = self.reference_decision(event, state)
        return d.action, d.score, d.fired

    def warm_up(self) -> None:
        """Run the kernel once on a strided view (the layout the engine passes). With
        features, on zero events: the tables must not see a fake event."""
        k = 0 if self.feature_args else 1
        ev = np.zeros(2, self.schema.dtype)[::2][:k]
        arrival = np.zeros(2, np.int64)[::2][:k]
        out, bits, hits, errors = self.new_buffers(2)
        self.kernel(ev, arrival, out[::2][:k], bits[:k], hits, errors, *self.feature_arrays)
        if self.update_kernel is not None:
            self.update_kernel(ev, arrival, np.zeros(2, np.uint8)[::2][:k], *self.feature_arrays)
