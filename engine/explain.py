"""`risk-engine explain`: why one journaled event was decided as it was (docs/EXPLAIN.md).

The feature tables are rebuilt as they were just before the event: the newest snapshot that
holds only records merged before it (every writer's seq in the snapshot at or before the
event by arrival, the event's own writer strictly below its seq), then every record of every
writer that ``iter_merged`` (the order of recovery and replay) puts before the event, through
the ruleset's update-only kernel with the RECORDED actions (so unless_blocked features are
exact whatever ruleset decided), then the admin changes (lists, account state, halt) logged
after the snapshot and before the event's arrival. On those tables:

- every feature, state and the halt is read for the event with the kernel's own njit read
  primitives and the binding's literal arguments (a window read includes the event itself;
  age and last read the value before it: docs/FEATURES.md "Semantics");
- every rule's condition is traced with the reference evaluator (rules.reference): each
  comparison, membership and boolean clause with its operand values, in evaluation order
  (clauses a short-circuit skipped are marked, not evaluated);
- the compiled kernel decides the event again on those tables: its action, score, flags and
  fired set must equal the recorded decision and the reference's; any difference is reported.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from engine.types import ACTION_NAMES, Action, DecisionFlag

REPLAY_BATCH = 65536


class ExplainError(RuntimeError):
    """Explain cannot answer; ``code`` is stable (docs/EXPLAIN.md), the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# --- reading the journal ---------------------------------------------------------------------

def _journal_call(fn, *args, **kw):
    """Run a journal read, mapping its errors to ExplainError codes."""
    from engine.journal import JournalCorruptError, JournalError
    try:
        return fn(*args, **kw)
    except JournalCorruptError as e:
        code = "SCHEMA_MISMATCH" if "schema_hash=0x" in str(e) else "JOURNAL_CORRUPT"
        raise ExplainError(code, str(e)) from None
    except JournalError as e:
        raise ExplainError("SEQ_NOT_IN_JOURNAL", str(e)) from None


def _record_at(journal_dir: str, schema, writer: int, seq: int):
    """The committed record ``seq`` of ``writer``, or None past the journal's end."""
    from engine.journal import JournalReader
    r = JournalReader(journal_dir, schema.dtype, schema.hash, writer)
    b = _journal_call(lambda: next(r.iter_batches(from_seq=seq, batch_records=1), None))
    return b[0].copy() if b is not None and len(b) else None


def find_event(journal_dir: str, schema, seq: int, writer: int | None):
    """(writer, record) of journal event ``seq``; ExplainError naming what is missing."""
    from engine.journal import JournalReader, list_writers
    writers = list_writers(journal_dir)
    if not writers:
        raise ExplainError("JOURNAL_NOT_FOUND", f"journal={journal_dir!r}: no journal files")
    if writer is None:
        if len(writers) > 1:
            raise ExplainError("WRITER_REQUIRED", f"journal={journal_dir!r} has writers "
                               f"{writers}: give the writer (--writer W) of seq {seq}")
        writer = writers[0]
    if writer not in writers:
        raise ExplainError("SEQ_NOT_IN_JOURNAL", f"journal={journal_dir!r}: no segments of "
                           f"writer={writer} (writers: {writers})")
    if seq < 1:
        raise ExplainError("SEQ_NOT_IN_JOURNAL", f"seq={seq}: sequence numbers start at 1")
    rec = _record_at(journal_dir, schema, writer, seq)
    if rec is None:
        r = JournalReader(journal_dir, schema.dtype, schema.hash, writer)
        last = _journal_call(r.last_committed_seq)
        raise ExplainError("SEQ_NOT_IN_JOURNAL", f"seq={seq} writer={writer}: the journal ends "
                           f"at seq {last}")
    return writer, rec


# --- rebuilding the tables -----------------------------------------------------------------

def _pick_snapshot(snapshot_dir, journal_dir, schema, writer: int, seq: int, arrival_ns: int,
                   notes: list):
    """The newest valid snapshot every record of which is merged before the event, or None."""
    from engine.snapshot import PREFIX, SUFFIX, SnapshotCorruptError, load_snapshot, load_snapshot_meta
    if not snapshot_dir or not os.path.isdir(snapshot_dir):
        return None
    names = sorted((n for n in os.listdir(snapshot_dir) if n.startswith(PREFIX) and n.endswith(SUFFIX)),
                   reverse=True)
    for name in names:
        path = os.path.join(snapshot_dir, name)
        try:
            seqs = load_snapshot_meta(path)
        except (SnapshotCorruptError, OSError, ValueError, KeyError) as e:
            notes.append(f"snapshot {path} not used: {e}")
            continue
        if seqs.get(writer, 0) >= seq:
            continue
        if not all(_merged_before(journal_dir, schema, w, s, writer, arrival_ns)
                   for w, s in seqs.items() if w != writer and s > 0):
            continue
        try:
            return load_snapshot(path)
        except (SnapshotCorruptError, OSError) as e:
            notes.append(f"snapshot {path} refused: {e}")
    return None


def _merged_before(journal_dir, schema, w: int, s: int, writer: int, arrival_ns: int) -> bool:
    """Does record ``s`` of writer ``w`` come before the event (``writer``, arriving at
    ``arrival_ns``) in arrival order (ties: the lower writer id first)?"""
    rec = _record_at(journal_dir, schema, w, s)
    if rec is None:
        return False
    a = int(rec["arrival_ns"])
    return a < arrival_ns or (a == arrival_ns and w < writer)


def _restore(fs, snap) -> None:
    names = fs.arg_names()
    for name, arr in zip(names, fs.arrays()):           # every table checked before any write
        got = snap.arrays.get(name)
        if got is None or got.shape != arr.shape or got.dtype != arr.dtype:
            raise ExplainError("SNAPSHOT_MISMATCH", f"snapshot {snap.path}: table {name} does not "
                               f"match the configured features (config changed?); give the config "
                               f"the engine ran with, or --no-snapshots")
    for name, arr in zip(names, fs.arrays()):
        arr[:] = snap.arrays[name]


def _replay_before(cfg, rs, arrays, journal_dir: str, writer: int, seq: int, from_seqs: dict) -> int:
    """Apply every record ``iter_merged`` yields before (writer, seq); returns how many."""
    from engine.journal import iter_merged, list_writers
    n = 0
    it = iter_merged(journal_dir, cfg.schema.dtype, cfg.schema.hash, list_writers(journal_dir),
                     from_seqs, REPLAY_BATCH, skip_corrupt=cfg.durability.skip_corrupt_journal_records)
    while True:
        got = _journal_call(next, it, None)
        if got is None:
            raise ExplainError("SEQ_NOT_IN_JOURNAL", f"seq={seq} writer={writer} was not met "
                               f"while replaying the journal")
        recs, wid = got
        hit = np.flatnonzero((wid == writer) & (recs["seq"] == np.uint64(seq)))
        end = int(hit[0]) if len(hit) else len(recs)
        if end:
            part = recs[:end]
            rs.apply_updates(part["event"], part["arrival_ns"], part["action"], *arrays)
            n += end
        if len(hit):
            return n


def _check_retained(cfg, journal_dir: str, from_seqs: dict) -> None:
    """Without a snapshot for a writer, its journal must still start at seq 1."""
    from engine.journal import JournalReader, list_writers
    for w in list_writers(journal_dir):
        if from_seqs.get(w, 1) > 1:
            continue
        segs = _journal_call(JournalReader(journal_dir, cfg.schema.dtype, cfg.schema.hash, w).segments)
        if segs and segs[0].first_seq != 1:
            raise ExplainError("SEQ_NOT_IN_JOURNAL", f"writer={w}: the retained journal starts at "
                               f"seq {segs[0].first_seq} and no usable snapshot holds the records "
                               f"before it; the event's features cannot be rebuilt exactly")


# --- reading what the rules saw ------------------------------------------------------------

def read_values(fs, event, arrival_ns: int) -> dict:
    """Every feature, state and the halt as the kernel reads them for ``event`` (a record of
    the schema dtype) on ``fs``'s tables now, with the kernel's own njit primitives."""
    from engine.features import scalar, state, windows
    from engine.features.keys import _key_pair, key_from_python
    from engine.features.table import MAX_TIME_MS
    schema = fs.schema

    def enc(name) -> np.uint64:
        v = event[name]
        f = schema.field(name)
        return np.uint64(key_from_python(bytes(v) if f.kind == "bytes" else int(v), f.type))

    specs = {s.name: s for s in fs.specs.features}
    states = {s.name: s for s in fs.specs.states}
    out = {}
    for name, b in fs.bindings.items():
        if b.what == "halt":
            out[name] = bool(state._halt_get(fs.array(b.arg)))
            continue
        if b.what == "list":
            continue
        consts = [int(c) for c in b.consts.split(", ")]
        arr = fs.array(b.arg)
        if b.what == "state":
            out[name] = int(state._read_state(arr, *consts, enc(states[name].key)))
            continue
        f = specs[name]
        keys = [enc(k) for k in f.key]
        key = keys[0] if len(keys) == 1 else np.uint64(_key_pair(keys[0], keys[1]))   # numba returns a Python int
        t = arrival_ns // 1_000_000 if f.time == "arrival" else int(np.int64(event[f.time]))
        now = min(max(0, t), MAX_TIME_MS)
        if f.kind in ("age", "last"):
            v = getattr(scalar, f"_read_{f.kind}")(arr, *consts, key, now)
        else:
            value = 0.0 if f.of is None else (enc(f.of) if f.kind == "distinct" else float(event[f.of]))
            v = getattr(windows, f"_read_{f.kind}")(arr, *consts, key, now, value)
        out[name] = int(v) if b.expr_type == "int" else float(v)
    return out


class SeenState:
    """The reference evaluator's state (value / contains) for one event: the values read from
    the tables, and list membership with rules.feature_model's semantics over the lists'
    current contents."""

    def __init__(self, fs, values: dict):
        from engine.features.lists import list_values
        from rules.feature_model import FeatureModel
        self.values = values
        self.lists = {ls.name: list_values(fs.array(f"fl_{ls.name}")) for ls in fs.specs.lists}
        self._model = FeatureModel(fs.specs, fs.schema, list_values=self.lists)

    def value(self, name: str):
        return self.values[name]

    def contains(self, name: str, x) -> bool:
        return self._model.contains(name, x)


# --- tracing a condition -------------------------------------------------------------------

def source(n) -> str:
    """The expression of an IR node as text (conversions implicit, as written)."""
    from rules import ir
    if isinstance(n, ir.Const):
        return repr(n.value)
    if isinstance(n, ir.Field):
        return n.name
    if isinstance(n, ir.Ext):
        return n.symbol.name
    if isinstance(n, (ir.Conv, ir.Truth)):
        return source(n.x)
    if isinstance(n, ir.Unary):
        return f"not {source(n.x)}" if n.op == "not" else f"-{source(n.x)}"
    if isinstance(n, ir.Bin):
        return f"({source(n.a)} {n.op} {source(n.b)})"
    if isinstance(n, ir.Cmp):
        parts = [source(n.operands[0])]
        for op, o in zip(n.ops, n.operands[1:]):
            parts += [op, source(o)]
        return " ".join(parts)
    if isinstance(n, ir.In):
        where = n.symbol.name if n.symbol is not None else "(" + ", ".join(repr(c.value) for c in n.items) + ")"
        return f"{source(n.x)} {'not in' if n.negate else 'in'} {where}"
    if isinstance(n, ir.BoolOp):
        return "(" + f" {n.op} ".join(source(v) for v in n.values) + ")"
    if isinstance(n, ir.IfExp):
        return f"({source(n.a)} if {source(n.cond)} else {source(n.b)})"
    if isinstance(n, ir.Call):
        return f"{n.fn}(" + ", ".join(source(a) for a in n.args) + ")"
    return type(n).__name__


def _value(n, env, state):
    """(value, error) of a node by the reference evaluator."""
    from rules.reference import EvalError, evaluate
    try:
        return evaluate(n, env, state), None
    except EvalError as e:
        return None, str(e) or "evaluation error"


def trace(cond, env, state) -> list[dict]:
    """The clauses of a condition in evaluation order: each comparison, membership, boolean
    clause (and, or, not) and conditional, with its value and its operands' values; clauses
    a short-circuit skipped have ``evaluated: False``."""
    from rules import ir
    out: list[dict] = []

    def clause(n, depth, operands):
        v, err = _value(n, env, state)
        out.append({"depth": depth, "expr": source(n), "value": v, "error": err,
                    "operands": operands, "evaluated": True})
        return v, err

    def skipped(n, depth):
        out.append({"depth": depth, "expr": source(n), "value": None, "error": None,
                    "operands": [], "evaluated": False})

    def walk(n, depth):
        if isinstance(n, (ir.Conv, ir.Truth)):
            return walk(n.x, depth)
        if isinstance(n, ir.BoolOp):
            v, _ = clause(n, depth, [])
            for k, sub in enumerate(n.values):
                sv, err = walk(sub, depth + 1)
                if err is not None or (n.op == "and") != bool(sv):
                    for rest in n.values[k + 1:]:
                        skipped(rest, depth + 1)
                    break
            return v, None
        if isinstance(n, ir.Unary) and n.op == "not":
            v, err = clause(n, depth, [])
            walk(n.x, depth + 1)
            return v, err
        if isinstance(n, ir.Cmp):
            ops = []
            for k, o in enumerate(n.operands):
                ov, oerr = _value(o, env, state)
                ops.append({"expr": source(o), "value": ov, "error": oerr})
                if oerr is not None:
                    break
                if k and not _cmp(n.ops[k - 1], ops[k - 1]["value"], ov):
                    break                              # the chain stops at its first False
            return clause(n, depth, ops)
        if isinstance(n, ir.In):
            xv, xerr = _value(n.x, env, state)
            return clause(n, depth, [{"expr": source(n.x), "value": xv, "error": xerr}])
        if isinstance(n, ir.IfExp):
            v, err = clause(n, depth, [])
            cv, cerr = walk(n.cond, depth + 1)
            if cerr is None:
                walk(n.a if cv else n.b, depth + 1)
                skipped(n.b if cv else n.a, depth + 1)
            return v, err
        return _value(n, env, state)        # arithmetic and plain values: shown as operands

    v, err = walk(cond, 0)
    if not out or out[0]["depth"] != 0 or out[0]["expr"] != source(cond):
        out.insert(0, {"depth": 0, "expr": source(cond), "value": v, "error": err,
                       "operands": [], "evaluated": True})
    return out


def _cmp(op, a, b) -> bool:
    from rules.reference import _CMP
    return _CMP[op](a, b)


# --- the explanation -----------------------------------------------------------------------

@dataclass
class RulesetView:
    """One ruleset's verdict on the event: per rule its trace, the kernel's decision and the
    reference's, and what set the action."""
    label: str
    files: list
    thresholds: dict
    rules: list = field(default_factory=list)
    kernel: dict = field(default_factory=dict)       # action, score, flags, fired (rule ids)
    reference: dict = field(default_factory=dict)    # action, score, fired, errors (rule ids)
    set_by: str = ""


def _decide(rs, fs_arrays, event_rec, arrival_ns: int, env, state) -> RulesetView:
    ev = np.zeros(1, rs.schema.dtype)
    ev[0] = event_rec
    out, bits, hits, errors = rs.new_buffers(1)
    rs.evaluate(ev, out, bits, hits, errors, np.array([arrival_ns], np.int64), fs_arrays)
    fired_k = [i for i in range(rs.n_rules) if int(bits[0, i // 64]) >> (i % 64) & 1]
    d = rs.reference_decision(env, state)
    view = RulesetView(rs.label, [], dict(rs.thresholds))
    for i, cond in enumerate(rs.conditions):
        view.rules.append({"index": i, "id": rs.rule_ids[i], "where": rs.where[i],
                           "mode": rs.modes[i], "action": ACTION_NAMES[rs.actions[i]],
                           "score": rs.scores[i], "fired": i in fired_k,
                           "reference_fired": i in d.fired, "error": i in d.errors,
                           "clauses": trace(cond, env, state)})
    view.kernel = {"action": ACTION_NAMES[int(out[0]["action"])], "score": float(out[0]["score"]),
                   "flags": _flag_names(int(out[0]["flags"])), "nfired": int(out[0]["nfired"]),
                   "fired": [rs.rule_ids[i] for i in fired_k]}
    view.reference = {"action": ACTION_NAMES[d.action], "score": d.score,
                      "fired": [rs.rule_ids[i] for i in sorted(d.fired)],
                      "errors": [rs.rule_ids[i] for i in sorted(d.errors)]}
    view.set_by = _set_by(rs, int(out[0]["action"]), float(out[0]["score"]), fired_k)
    return view


def _set_by(rs, action: int, score: float, fired) -> str:
    enforce = [i for i in fired if rs.modes[i] == "enforce"]
    top = max((rs.actions[i] for i in enforce), default=int(Action.ALLOW))
    by_rules = [rs.rule_ids[i] for i in enforce if rs.actions[i] == action]
    if action == top and by_rules and action != Action.ALLOW:
        return f"rule(s) {', '.join(by_rules)} (action {ACTION_NAMES[action]})"
    if action > top:
        name = ACTION_NAMES[action]
        return (f"threshold: score {score:g} >= {name} {rs.thresholds.get(name):g} "
                f"(the most severe fired enforce rule says {ACTION_NAMES[top]})")
    return f"allow: no fired enforce rule asks for more and the score {score:g} is below the thresholds"


def _flag_names(flags: int) -> list[str]:
    return [f.name for f in DecisionFlag if f.value and flags & f.value]


@dataclass
class Explanation:
    writer: int
    seq: int
    arrival_ns: int
    event: dict
    recorded: dict
    replay: dict                  # where the replay started and what it applied
    values: dict                  # feature / state / halt values as the rules saw them
    lists: dict                   # list name -> size
    recorded_rules: RulesetView
    candidate: RulesetView | None = None
    mismatches: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("writer", "seq", "arrival_ns", "event", "recorded",
                                             "replay", "values", "lists", "mismatches", "notes")}
        d["agrees"] = self.agrees
        d["recorded_rules"] = vars(self.recorded_rules)
        d["candidate"] = vars(self.candidate) if self.candidate is not None else None
        return _jsonable(d)

    def text(self) -> str:
        L = [f"event writer={self.writer} seq={self.seq} arrival_ns={self.arrival_ns}",
             "  " + " ".join(f"{k}={_show(v)}" for k, v in self.event.items()),
             f"recorded: action={self.recorded['action']} score={self.recorded['score']:g} "
             f"flags={','.join(self.recorded['flags']) or '-'} generation={self.recorded['generation']}"]
        k = self.recorded_rules.kernel
        L.append(f"replayed: action={k['action']} score={k['score']:g} flags={','.join(k['flags']) or '-'} "
                 f"fired={','.join(k['fired']) or '-'}")
        if self.mismatches:
            L += ["", "!!! THE REPLAY DOES NOT AGREE WITH THE RECORD:"] + [f"!!!   {m}" for m in self.mismatches]
        else:
            L.append("replay agrees with the record (action, score, flags; kernel and reference fired sets)")
        r = self.replay
        L += ["", f"replay: {r['snapshot'] or 'no snapshot, from the journal start'}; "
                  f"{r['records']} journal record(s) and {r['admin_changes']} admin change(s) applied before the event"]
        L += [f"note: {n}" for n in self.notes]
        L += ["", "values read for this event (windows include the event; age/last: before it):"]
        L += [f"  {n:<24} {_show(v)}" for n, v in self.values.items()]
        L += [f"  {n:<24} list of {c} value(s)" for n, c in self.lists.items()]
        L += _view_text("ruleset", self.recorded_rules)
        if self.candidate is not None:
            L += _view_text("candidate", self.candidate)
        return "\n".join(L)


def _view_text(title: str, v: RulesetView) -> list[str]:
    th = " ".join(f"{k}>={x:g}" for k, x in sorted(v.thresholds.items())) or "none"
    L = ["", f"{title} {v.label}  thresholds: {th}",
         f"  decision: {v.kernel['action']} score={v.kernel['score']:g}; set by {v.set_by}"]
    for r in v.rules:
        mark = "FIRED" if r["fired"] else "-    "
        L.append(f"  [{r['index']}] {mark} {r['id']} ({r['mode']}, {r['action']}, score {r['score']:g}) {r['where']}"
                 + ("  (evaluation error)" if r["error"] else ""))
        for c in r["clauses"]:
            pad = "      " + "  " * c["depth"]
            if not c["evaluated"]:
                L.append(f"{pad}{c['expr']}  (not evaluated: short-circuit)")
                continue
            val = f"error: {c['error']}" if c["error"] else _show(c["value"])
            shown = [o for o in c["operands"] if o["error"] is not None or o["expr"] != _show(o["value"])]
            ops = "  [" + ", ".join(f"{o['expr']}={_show(o['value']) if o['error'] is None else 'error'}"
                                     for o in shown) + "]" if shown else ""     # literals not repeated
            L.append(f"{pad}{c['expr']} -> {val}{ops}")
    return L


def _show(v) -> str:
    if isinstance(v, bytes):
        return repr(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bytes):
        return x.decode("utf-8", "backslashreplace")
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return _jsonable(float(x))
    return x


def _compile(cfg, files, fs):
    from rules import compile_ruleset
    return compile_ruleset(list(files), cfg.schema, thresholds=cfg.rules.thresholds,
                           on_error=cfg.rules.on_error, features=fs)


class Explainer:
    """Explains events of one journal: the rulesets are compiled once, the tables rebuilt
    for every event (fresh process-local tables each time).

    ``rules``: the files of the ruleset that decided (default: the config's); ``candidate``:
    files of a ruleset shown beside it (what-if); ``snapshot_dir``: "" = the config's,
    None = no snapshots; ``admin_log``: "" = admin.log in the journal directory, None = none.
    Raises ExplainError (stable codes) and rules.RulesetError.
    """

    def __init__(self, cfg, journal_dir: str, *, rules=None, candidate=None,
                 snapshot_dir: str | None = "", admin_log: str | None = ""):
        from engine.recovery_state import _dirs
        from rules.features import feature_set_for
        if not os.path.isdir(journal_dir):
            raise ExplainError("JOURNAL_NOT_FOUND", f"journal={journal_dir!r}: not a directory")
        self.cfg, self.journal_dir = cfg, str(journal_dir)
        self.snapshot_dir = _dirs(cfg)[1] if snapshot_dir == "" else snapshot_dir
        self.admin_log = os.path.join(self.journal_dir, "admin.log") if admin_log == "" else admin_log
        self.files = [str(f) for f in (rules or cfg.rules.files)]
        self.rules_given = bool(rules)
        self.candidate_files = [str(f) for f in candidate] if candidate else None
        fs = feature_set_for(cfg)                      # compile-time tables; never the replay's
        self.rs = _compile(cfg, self.files, fs)
        self.crs = _compile(cfg, self.candidate_files, fs) if candidate else None

    def explain(self, seq: int, writer: int | None = None) -> Explanation:
        from engine.recovery import RecoveryError
        from engine.recovery_state import _apply_admin_log
        from rules.features import feature_set_for
        from rules.reference import event_env
        cfg, jdir, schema = self.cfg, self.journal_dir, self.cfg.schema
        writer, rec = find_event(jdir, schema, seq, writer)
        arrival = int(rec["arrival_ns"])
        notes: list[str] = []
        snap = _pick_snapshot(self.snapshot_dir, jdir, schema, writer, seq, arrival, notes)
        fs = feature_set_for(cfg)
        from_seqs = {}
        if snap is not None:
            _restore(fs, snap)
            from_seqs = {w: s + 1 for w, s in snap.journal_seq.items()}
        _check_retained(cfg, jdir, from_seqs)
        n = _replay_before(cfg, self.rs, fs.arrays(), jdir, writer, seq, from_seqs)
        admin = 0
        if self.admin_log:
            try:
                admin, torn = _apply_admin_log(SimpleNamespace(fs=fs), self.admin_log,
                                               snap.created_ns if snap else 0, before_mono_ns=arrival)
            except RecoveryError as e:
                raise ExplainError("ADMIN_LOG_CORRUPT", str(e)) from None
            if torn:
                notes.append(torn.lstrip("; "))
        values = read_values(fs, rec["event"], arrival)
        state = SeenState(fs, values)
        env = event_env(rec["event"], schema)
        before = tuple(a.copy() for a in fs.arrays()) if self.crs is not None else None
        view = _decide(self.rs, fs.arrays(), rec["event"], arrival, env, state)
        view.files = self.files
        cand = None
        if self.crs is not None:
            cand = _decide(self.crs, before, rec["event"], arrival, env, state)
            cand.files = self.candidate_files
        recorded = {"action": ACTION_NAMES[int(rec["action"])], "score": float(rec["score"]),
                    "flags": _flag_names(int(rec["flags"])), "generation": int(rec["generation"])}
        if recorded["generation"] != 1 and not self.rules_given:
            notes.append(f"recorded generation {recorded['generation']}: decided after a reload (0: a "
                         f"default decision); explained with {', '.join(self.files)}; if those were "
                         f"not that generation's rules, give them with --recorded-rules")
        return Explanation(writer, seq, arrival, env, recorded,
                           {"snapshot": snap.path if snap else None,
                            "snapshot_seqs": dict(snap.journal_seq) if snap else {},
                            "records": n, "admin_changes": admin},
                           values, {k: int(len(v)) for k, v in state.lists.items()}, view, cand,
                           _mismatches(recorded, view), notes)


def explain(cfg, journal_dir: str, seq: int, writer: int | None = None, **kw) -> Explanation:
    """One event: ``Explainer(cfg, journal_dir, **kw).explain(seq, writer)``."""
    return Explainer(cfg, journal_dir, **kw).explain(seq, writer)


def _mismatches(recorded: dict, v: RulesetView) -> list[str]:
    out = []
    k, r = v.kernel, v.reference
    if k["action"] != recorded["action"]:
        out.append(f"action: recorded {recorded['action']}, replayed {k['action']}")
    if k["score"] != recorded["score"]:
        out.append(f"score: recorded {recorded['score']:g}, replayed {k['score']:g}")
    if k["flags"] != recorded["flags"]:
        out.append(f"flags: recorded {recorded['flags']}, replayed {k['flags']}")
    if r["action"] != k["action"] or r["score"] != k["score"] or r["fired"] != k["fired"]:
        out.append(f"kernel and reference evaluator differ: kernel {k['action']} {k['score']:g} "
                   f"{k['fired']}, reference {r['action']} {r['score']:g} {r['fired']}")
    return out
