"""The explanation of one event (engine.explain): one ruleset's verdict (RulesetView), what
set the action, the recorded-versus-replayed check, and the text and JSON forms."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from shm.types import ACTION_NAMES, Action, DecisionFlag
from engine.explain_trace import trace


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


@dataclass
class RequestExplanation:
    """Every journaled event of one request (client_id, request_id), in the journal's merged
    order (writer, then seq: a request's events share one arrival time)."""
    client_id: int
    request_id: int
    arrival_ns: int
    events: list                  # Explanation per event

    @property
    def agrees(self) -> bool:
        return all(e.agrees for e in self.events)

    def to_dict(self) -> dict:
        return {"client_id": self.client_id, "request_id": self.request_id,
                "arrival_ns": self.arrival_ns, "agrees": self.agrees,
                "events": [e.to_dict() for e in self.events]}

    def text(self) -> str:
        head = (f"request client_id={self.client_id} request_id={self.request_id} "
                f"arrival_ns={self.arrival_ns}: {len(self.events)} journaled event(s) "
                f"(" + ", ".join(f"writer={e.writer} seq={e.seq}" for e in self.events) + ")")
        parts = [head]
        for k, e in enumerate(self.events):
            parts += ["", f"=== event {k + 1} of {len(self.events)} ===", e.text()]
        return "\n".join(parts)


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
