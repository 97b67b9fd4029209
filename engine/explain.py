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

Modules: engine.explain_replay (the journal, the snapshot, the tables), engine.explain_trace
(values and clauses), engine.explain_report (the verdicts and the printed forms); this one
binds them (Explainer).
"""
from __future__ import annotations

import os
from types import SimpleNamespace

from engine.explain_replay import (ExplainError, _check_retained, _pick_snapshot, _replay_before,
                                   _restore, find_event, request_events)
from engine.explain_report import Explanation, RequestExplanation, _decide, _flag_names, _mismatches
from engine.explain_trace import SeenState, read_values
from engine.recovery import RecoveryError
from engine.recovery_state import _apply_admin_log, _dirs
from rules import compile_ruleset
from rules.features import feature_set_for
from rules.reference import event_env
from shm.ipv4 import format_ipv4
from shm.types import ACTION_NAMES


def _compile(cfg, files, fs, texts=None):
    return compile_ruleset(list(files), cfg.schema, thresholds=cfg.rules.thresholds,
                           on_error=cfg.rules.on_error, features=fs, texts=texts)


class Explainer:
    """Explains events of one journal: the rulesets are compiled once, the tables rebuilt
    for every event (fresh process-local tables each time).

    ``rules``: the files of the ruleset that decided (default: the config's), ``rule_texts``
    their contents as the engine compiled them (else read from ``rules``); ``candidate``:
    files of a ruleset shown beside it (what-if); ``snapshot_dir``: "" = the config's,
    None = no snapshots; ``admin_log``: "" = admin.log in the journal directory, None = none.
    Raises ExplainError (stable codes) and rules.RulesetError.
    """

    def __init__(self, cfg, journal_dir: str, *, rules=None, rule_texts=None, candidate=None,
                 snapshot_dir: str | None = "", admin_log: str | None = ""):
        if not os.path.isdir(journal_dir):
            raise ExplainError("JOURNAL_NOT_FOUND", f"journal={journal_dir!r}: not a directory")
        self.cfg, self.journal_dir = cfg, str(journal_dir)
        self.snapshot_dir = _dirs(cfg)[1] if snapshot_dir == "" else snapshot_dir
        self.admin_log = os.path.join(self.journal_dir, "admin.log") if admin_log == "" else admin_log
        self.files = [str(f) for f in (rules or cfg.rules.files)]
        self.rules_given = bool(rules)
        self.candidate_files = [str(f) for f in candidate] if candidate else None
        fs = feature_set_for(cfg)                      # compile-time tables; never the replay's
        self.rs = _compile(cfg, self.files, fs, rule_texts)
        self.crs = _compile(cfg, self.candidate_files, fs) if candidate else None

    def explain(self, seq: int, writer: int | None = None) -> Explanation:
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
        shown = {k: format_ipv4(v) if schema.field(k).type == "ipv4" else v for k, v in env.items()}
        return Explanation(writer, seq, arrival, shown, recorded,
                           {"snapshot": snap.path if snap else None,
                            "snapshot_seqs": dict(snap.journal_seq) if snap else {},
                            "records": n, "admin_changes": admin},
                           values, {k: int(len(v)) for k, v in state.lists.items()}, view, cand,
                           _mismatches(recorded, view), notes)


    def explain_request(self, client_id: int, request_id: int) -> RequestExplanation:
        """Every journaled event of request (client_id, request_id), each replayed and
        explained as ``explain`` does; REQUEST_NOT_IN_JOURNAL, or REQUEST_AMBIGUOUS when
        several requests in the journal carry the ids (their events named)."""
        arrival, events = request_events(self.journal_dir, self.cfg.schema, client_id, request_id,
                                         self.cfg.durability.skip_corrupt_journal_records)
        return RequestExplanation(client_id, request_id, arrival,
                                  [self.explain(s, w) for w, s in events])


def explain(cfg, journal_dir: str, seq: int, writer: int | None = None, **kw) -> Explanation:
    """One event: ``Explainer(cfg, journal_dir, **kw).explain(seq, writer)``."""
    return Explainer(cfg, journal_dir, **kw).explain(seq, writer)
