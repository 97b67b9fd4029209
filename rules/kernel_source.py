"""Assemble the generated kernel module: imports, constants, the column pass of the stateless
rules (rules/kernel_columns.py) and their per-event form for batches below
COLUMN_MIN_EVENTS, chunk functions of the rules that read features, lists or state (called
per event, in order), the kernel.

The module defines EVENT_DTYPE, N_RULES and ``_kernel`` compiled eagerly for the explicit
signature (events and out may be strided views: layout 'A'):
    _kernel(events: schema.dtype[::A], arrival_ns: int64[::A], out: RESPONSE_SLOT_DTYPE[::A],
            bits: uint64[:, ::1], hits: int64[::1], errors: int64[::1], *ext) -> None
where ``ext`` are the feature arrays (uint64[::1], FeatureSet.arg_names() order) and, with
features, ``_apply_updates(events, arrival_ns, actions: uint8[::A], *ext)`` (rules/features.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from shm.types import MAX_FIRED, DecisionFlag
from rules import ir
from rules.codegen import CHUNK_RULES, RuleEmitter, field_loads, flit, ilit, reads_state, vector_ops
from rules.kernel_columns import COLUMN_MIN_EVENTS, ColumnLoop, ColumnPass

_HELPERS = ("_ldb", "_add_ii", "_sub_ii", "_mul_ii", "_floordiv_ii", "_mod_ii", "_pow_ii",
            "_neg_i", "_abs_i", "_u64_to_i", "_truediv_ii", "_div_ff", "_mod_ff",
            "_floordiv_ff", "_pow_ff", "_round_f", "_cmp_if", "_cmp_uf", "_cmp_ui",
            "_w_i", "_w_u", "_w_to_i", "_w_to_f", "_abs_w", "_cmp_wi", "_cmp_wu", "_cmp_wf",
            "_cmp_ww",
            "_in_sorted_i", "_in_sorted_u", "_f64_bits", "_bits_f64")
_FIRED = ("_count_errors", "_finish_word", "_select_fired")


HASHED_SOURCES = ("kernel_helpers.py", "kernel_fired.py", "codegen.py", "kernel_columns.py",
                  "kernel_source.py")


def _helpers_hash(root: Path = Path(__file__).parent) -> str:
    """Hash of the helper and codegen sources. Numba's cache does not notice a change in a
    called function, so it is part of every generated file (and therefore its cache key)."""
    h = hashlib.blake2b(digest_size=8)
    for mod in HASHED_SOURCES:
        h.update((root / mod).read_bytes())
    return h.hexdigest()


HELPERS_HASH = _helpers_hash()


@dataclass(frozen=True)
class KernelRule:
    index: int
    rule_id: str
    where: str            # file:line, for the comment
    cond: ir.Node         # folded IR, type bool
    action: int
    score: float
    enforce: bool


def _dtype_literal(dt) -> str:
    names = list(dt.names)
    formats = [dt.fields[n][0].str for n in names]
    offsets = [dt.fields[n][1] for n in names]
    return (f"np.dtype({{'names': {names!r}, 'formats': {formats!r}, 'offsets': {offsets!r}, "
            f"'itemsize': {dt.itemsize}, 'aligned': True}})")


def _rule_block(r: KernelRule, on_error_fire: bool, fields: dict, consts: dict) -> tuple[list[str], bool]:
    """Statements that set rule r's bit in ``fw`` (fired) or ``ew`` (evaluation error); and
    whether the rule can fail."""
    em = RuleEmitter(r.index, fields, consts)
    bit = r.index % 64
    mask = ilit(-(1 << 63)) if bit == 63 else str(1 << bit)
    em.emit(1, f"# [{r.index}] {r.rule_id}  {r.where}")
    at = len(em.lines)
    cond = em.expr(r.cond, 1)
    if not em.can_fail:
        em.emit(1, f"if {cond}:")
        em.emit(2, f"fw |= {mask}")
        return em.lines, False
    em.lines.insert(at, f"    e{r.index} = False")
    em.emit(1, f"if e{r.index}:")
    em.emit(2, f"ew |= {mask}")
    if on_error_fire:
        em.emit(2, f"fw |= {mask}")
    em.emit(1, f"elif {cond}:")
    em.emit(2, f"fw |= {mask}")
    return em.lines, True


def _straight_block(r: KernelRule, on_error_fire: bool, fields: dict, consts: dict):
    """Like _rule_block, branch-free (``fw |= int(cond) << bit``); None when the rule's code
    has a branch (a loop vectorizes only when every statement in it is straight-line code)."""
    em = RuleEmitter(r.index, fields, consts, straight=True)
    bit = r.index % 64
    em.emit(1, f"# [{r.index}] {r.rule_id}  {r.where}")
    at = len(em.lines)
    cond = em.expr(r.cond, 1)
    if em.branches:
        return None
    if not em.can_fail:
        em.emit(1, f"fw |= np.int64({cond}) << {bit}")
        return em.lines, False
    e = f"e{r.index}"
    em.lines.insert(at, f"    {e} = False")
    em.emit(1, f"ew |= np.int64({e}) << {bit}")
    em.emit(1, f"fw |= np.int64({f'({e} | {cond})' if on_error_fire else f'((not {e}) & {cond})'}) << {bit}")
    return em.lines, True


def _column_loops(w: int, rules, on_error_fire: bool, consts: dict) -> list[ColumnLoop]:
    """The stateless rules of word ``w``: a loop of the straight-line ones (it vectorizes)
    and one of the rest in their per-event form (a short-circuit skips a costly operation)."""
    vec_fields: dict = {}
    vec: list = []
    other_fields: dict = {}
    other: list = []
    for r in rules:
        if reads_state(r.cond):
            continue
        fields: dict = {}
        got = _straight_block(r, on_error_fire, fields, consts) if vector_ops(r.cond) else None
        if got is not None:
            vec_fields.update(fields)
            vec.append(got)
        else:
            other.append(_rule_block(r, on_error_fire, other_fields, consts))
    return [ColumnLoop(w, [s for lines, _ in blocks for s in lines], f, any(x for _, x in blocks))
            for blocks, f in ((vec, vec_fields), (other, other_fields))]


def generate(rules: list[KernelRule], n_rules: int, schema, thresholds: dict,
             on_error: str, label: str, ext_args: tuple[str, ...] = (), plan=None) -> str:
    """Source text of the kernel module for ``rules`` (indexes 0..n_rules-1); ``plan``:
    a rules.features.FeaturePlan (feature reads, updates and the _apply_updates entry)."""
    consts: dict = {}
    extra = "".join(f", {a}" for a in ext_args + (plan.chunk_args if plan else ()))
    kextra = "".join(f", {a}" for a in ext_args + (plan.kernel_args if plan else ()))
    out = [
        f"# Generated by the risk-engine rule compiler for {label}. Do not edit.",
        f"# helpers {HELPERS_HASH}",
        "import numba",
        "import numpy as np",
        "from numba import njit",
        "from shm.types import RESPONSE_SLOT_DTYPE",
        f"from rules.kernel_helpers import {', '.join(_HELPERS)}",
        f"from rules.kernel_fired import {', '.join(_FIRED)}",
        *(plan.imports if plan else ()),
        *((f"# features {plan.digest}",) if plan else ()),
        "",
        f"EVENT_DTYPE = {_dtype_literal(schema.dtype)}",
        f"N_RULES = {n_rules}",
        "_OPTS = dict(cache=True, nogil=True, error_model='numpy')",
        "",
    ]
    fire = on_error == "fire"
    loops = []
    for c in range(0, len(rules), CHUNK_RULES):
        loops += _column_loops(c // 64, rules[c:c + CHUNK_RULES], fire, consts)
    cols = ColumnPass(schema, loops)
    body = cols.source()
    calls = []
    singles = {}                                # word -> per-event function of its stateless rules
    for c in range(0, len(rules), CHUNK_RULES):
        for stateful in (True, False):
            if not stateful and not cols.loops:
                continue
            fields: dict = {}
            lines = []
            for r in rules[c:c + CHUNK_RULES]:
                if reads_state(r.cond) == stateful:
                    lines += _rule_block(r, fire, fields, consts)[0]
            if not lines:
                continue
            name = f"_chunk{c // CHUNK_RULES}" if stateful else f"_single{c // CHUNK_RULES}"
            args = f"ev, i{extra}" if stateful else "ev"
            if stateful:
                calls.append((name, c // 64))
            else:
                singles[c // 64] = name
            body.append("@njit(**_OPTS)")
            body.append(f"def {name}({args}):")
            body += ["    " + s for s in field_loads(fields, schema)]
            body += ["    fw = 0", "    ew = 0"] + lines
            body.append("    return fw, ew")
            body.append("")
    for g, (dt, vals) in consts.items():
        out.append(f"{g} = np.array({vals!r}, dtype={dt})")
    scores = [r.score if r.enforce else 0.0 for r in rules]
    actions = [r.action if r.enforce else 0 for r in rules]
    out.append(f"_SCORES = np.array([{', '.join(flit(x) for x in scores)}], dtype=np.float64)")
    out.append(f"_ACTIONS = np.array({actions!r}, dtype=np.int64)")
    # binary replies carry MAX_FIRED indexes: on overflow the ones that set the action win
    prio = sorted(range(len(rules)), key=lambda k: (not rules[k].enforce, -rules[k].action,
                                                    -rules[k].score, k) if rules[k].enforce
                  else (True, 0, 0.0, k))
    out.append(f"_PRIO = np.array({[rules[k].index for k in prio]!r}, dtype=np.int64)")
    out += [""] + body + (plan.prefetch_source() if plan else [])
    nw = max(1, (n_rules + 63) // 64)
    if singles:                         # its own function: the kernel's loop compiles as without it
        out += ["@njit(**_OPTS)", f"def _per_event(events, arrival_ns, out, bits, hits, errors{kextra}):",
                "    for i in range(events.shape[0]):"]
        starts = []
        for w in range(nw):
            starts += [f"fw{w}, ew{w} = {singles[w]}(ev)"] if w in singles else [f"fw{w} = 0", f"ew{w} = 0"]
        out += ["        " + s for s in _event_lines(starts, calls, extra, nw, thresholds, plan)]
        out += ["", ""]
    out += [
        "_SIG = numba.void(numba.types.Array(numba.from_dtype(EVENT_DTYPE), 1, 'A'),",
        "                  numba.types.Array(numba.int64, 1, 'A'),",
        "                  numba.types.Array(numba.from_dtype(RESPONSE_SLOT_DTYPE), 1, 'A'),",
        "                  numba.uint64[:, ::1], numba.int64[::1], numba.int64[::1]"
        + "".join(", numba.uint64[::1]" for _ in (plan.kernel_args if plan else ())) + ")",
        "",
        "",
        "@njit(_SIG, **_OPTS)" if not ext_args else "@njit(**_OPTS)",
        f"def _kernel(events, arrival_ns, out, bits, hits, errors{kextra}):",
        # compiled code has no bounds checks: a buffer shorter than the batch would be written
        # past its end (heap corruption), so the kernel refuses it once per call
        "    n = events.shape[0]",
        "    if arrival_ns.shape[0] < n or out.shape[0] < n or bits.shape[0] < n \\",
        f"            or bits.shape[1] < {nw} or hits.shape[0] < N_RULES or errors.shape[0] < N_RULES:",
        "        raise ValueError('rule kernel: an array is shorter than the batch or the ruleset')",
    ]
    if singles:                         # small batches: per event, short-circuit, no scratch
        out += [f"    if n < {COLUMN_MIN_EVENTS}:",
                f"        _per_event(events, arrival_ns, out, bits, hits, errors{kextra})", "        return"]
    out += ["    " + s for s in cols.kernel_lines()]
    out += ["    for i in range(n):"]
    out += ["        " + s for s in cols.block_lines()]
    starts = []
    for w in range(nw):
        fw, ew = cols.word_start(w)
        starts += [f"fw{w} = {fw}", f"ew{w} = {ew}"]
    out += ["        " + s for s in _event_lines(starts, calls, extra, nw, thresholds, plan)]
    if plan is not None:
        out += ["", ""] + plan.apply_updates_source()
    out.append("")
    return "\n".join(out)


def _event_lines(starts: list, calls: list, extra: str, nw: int, thresholds: dict, plan) -> list[str]:
    """The kernel's statements for event ``i``: feature reads, the words' start values
    (``starts``), the chunk calls, the decision and the feature updates."""
    out = ["ev = events[i]", "o = out[i]"]
    out += list(plan.read_lines() if plan else ())
    out += starts
    for name, w in calls:
        out += [f"a, b = {name}(ev, i{extra})", f"fw{w} |= a", f"ew{w} |= b"]
    out += ["score = 0.0", "action = 0", "nf = 0", "flags = 0"]
    for w in range(nw):
        out += [f"bits[i, {w}] = np.uint64(fw{w})",
                f"if ew{w} != 0:",
                f"    _count_errors(errors, np.uint64(ew{w}), {64 * w})",
                f"    flags |= {int(DecisionFlag.EVAL_ERROR)}",
                f"if fw{w} != 0:",
                f"    score, action, nf = _finish_word(o, np.uint64(fw{w}), {64 * w}, hits, _SCORES, _ACTIONS, score, action, nf, {MAX_FIRED})"]
    th = dict(thresholds)
    if "block" in th:
        out += [f"if score >= {flit(th['block'])} and action < 2:", "    action = 2"]
    if "review" in th:
        out += [f"if score >= {flit(th['review'])} and action < 1:", "    action = 1"]
    out += [
        f"if nf > {MAX_FIRED}:",
        f"    flags |= {int(DecisionFlag.FIRED_OVERFLOW)}",
        f"    _select_fired(o, bits[i], _PRIO, {MAX_FIRED})",
        f"for k in range(min(nf, {MAX_FIRED}), {MAX_FIRED}):",
        "    o.fired[k] = 0",
        "o.action = np.uint8(action)",
        "o.score = score",
        "o.flags = np.uint8(flags)",
        "o.nfired = np.uint16(min(nf, 65535))",
    ]
    if plan is not None:                # reads -> rules -> decision -> updates
        out += plan.update_lines("action", fused=True)
    return out
