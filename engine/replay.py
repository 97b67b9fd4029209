"""Backtest: re-evaluate journaled events in order with a baseline and a candidate ruleset.

Reads every worker's journal merged by arrival time (engine.journal.iter_merged), runs both
compiled kernels over each batch (one kernel call per batch and ruleset, no per-event Python)
and counts: recorded action -> candidate action, and per-rule hits under each ruleset. The
baseline is the config's rules (what is deployed); the candidate is ``--rules``. The two
kernels run at the same time, the candidate's on a second thread: each has its own feature
tables, and a rule kernel releases the GIL (nogil), so they take two cores where there are.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from engine.journal import iter_merged, list_writers
from rules import compile_ruleset
from rules.features import feature_set_for
from shm.types import ACTION_NAMES, RESPONSE_SLOT_DTYPE


@dataclass
class ReplayReport:
    baseline: str
    candidate: str
    events: int = 0
    seconds: float = 0.0
    changed: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.int64))  # recorded x candidate
    hits_before: dict = field(default_factory=dict)
    hits_after: dict = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def text(self) -> str:
        lines = [f"replayed {self.events} events in {self.seconds:.2f} s "
                 f"({self.events_per_s / 1e6:.2f} M events/s)",
                 f"baseline {self.baseline}  ->  candidate {self.candidate}", "",
                 "decisions (rows: recorded, columns: candidate)",
                 f"{'':>10}" + "".join(f"{a:>12}" for a in ACTION_NAMES)]
        for i, a in enumerate(ACTION_NAMES):
            lines.append(f"{a:>10}" + "".join(f"{int(v):>12}" for v in self.changed[i]))
        moved = int(self.changed.sum() - np.trace(self.changed))
        lines += [f"changed: {moved} of {self.events}", "", f"{'rule':<32}{'before':>10}{'after':>10}{'delta':>10}"]
        for rid in sorted(set(self.hits_before) | set(self.hits_after)):
            b, a = self.hits_before.get(rid, 0), self.hits_after.get(rid, 0)
            if a or b:
                lines.append(f"{rid:<32}{b:>10}{a:>10}{a - b:>+10}")
        return "\n".join(lines)


class _Eval:
    def __init__(self, rs, batch: int):
        self.rs = rs
        self.out = np.zeros(batch, RESPONSE_SLOT_DTYPE)
        self.bits = np.zeros((batch, max(1, (rs.n_rules + 63) // 64)), np.uint64)
        self.hits = np.zeros(max(rs.n_rules, 1), np.int64)
        self.errors = np.zeros(max(rs.n_rules, 1), np.int64)

    def run(self, events: np.ndarray, arrival_ns: np.ndarray) -> np.ndarray:
        n = len(events)
        o = self.out[:n]
        self.rs.kernel(events, arrival_ns, o, self.bits[:n], self.hits, self.errors,
                       *self.rs.feature_arrays)
        return o["action"]

    def hit_counts(self) -> dict:
        return {rid: int(h) for rid, h in zip(self.rs.rule_ids, self.hits.tolist())}


def replay(journal_dir: str, cfg, candidate_files=None, batch: int = 65536, progress=None) -> ReplayReport:
    kw = dict(thresholds=cfg.rules.thresholds, on_error=cfg.rules.on_error)
    # each ruleset rebuilds the features from scratch over the replayed events (its own
    # process-local tables; lists from their files, state ACTIVE, no halt)
    base = compile_ruleset(list(cfg.rules.files), cfg.schema, features=feature_set_for(cfg), **kw)
    cand = compile_ruleset(list(candidate_files), cfg.schema, features=feature_set_for(cfg), **kw) \
        if candidate_files else base
    if not list_writers(journal_dir):
        raise FileNotFoundError(f"journal={journal_dir!r}: no journal files")
    eb, ec = _Eval(base, batch), (_Eval(cand, batch) if cand is not base else None)
    rep = ReplayReport(base.label, cand.label)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="replay-candidate") as pool:
        for records, _ in iter_merged(journal_dir, cfg.schema.dtype, cfg.schema.hash, batch_records=batch):
            for lo in range(0, len(records), batch):
                r = records[lo:lo + batch]
                ev, arrival = r["event"], r["arrival_ns"]
                later = pool.submit(ec.run, ev, arrival) if ec is not None else None
                new = eb.run(ev, arrival)
                if later is not None:
                    new = later.result()
                # recorded x candidate action counts (actions are 0..2; one bincount, not add.at)
                rep.changed += np.bincount(r["action"].astype(np.intp) * 3 + new, minlength=9)[:9].reshape(3, 3)
                rep.events += len(r)
            if progress:
                progress(rep.events)
    rep.seconds = time.perf_counter() - t0
    rep.hits_before = eb.hit_counts()
    rep.hits_after = (ec or eb).hit_counts()
    return rep


def stderr_progress():
    """A progress line on stderr: events replayed and the rate."""
    t0 = time.perf_counter()

    def show(n: int) -> None:
        dt = max(time.perf_counter() - t0, 1e-9)
        sys.stderr.write(f"\rreplay: {n:>12,} events  {n / dt / 1e6:6.2f} M/s")
        sys.stderr.flush()
    return show
