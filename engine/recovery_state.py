"""Rebuild the shared feature tables at start (or after a worker crash): last good snapshot,
then every journaled event after it through the ruleset's update-only kernel, then the admin
changes logged after the snapshot.

Exactness: a snapshot equals the tables after exactly its journal seqs (docs/DURABILITY.md);
the update-only kernel commits what the serving kernel committed for the recorded action
(unless_blocked included); so the rebuilt tables equal the tables as they were, minus events
that were never journaled, which were never answered either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from engine.admin_log import AdminLogCorrupt, read
from engine.journal import list_writers
from engine.recovery import RecoveryError, recover_all
from engine.snapshot import SnapshotStore
from shm.features.lists import as_values, list_values
from shm.features.state import STATE_NAMES
from shm.runtime.securedir import ensure_private_dir


class StateLayoutChanged(RuntimeError):
    """The snapshot's tables do not fit the configured features (the config changed)."""


@dataclass(frozen=True)
class Recovered:
    """What a recovery did: a one-line summary, one line per refused snapshot and per corrupt
    journal run met (skipped, or held by the snapshot), and their counts for the metrics."""
    summary: str
    notices: tuple[str, ...] = ()
    corrupt_records: int = 0
    refused_snapshots: int = 0
    snapshot_seqs: tuple[tuple[int, int], ...] = ()   # (writer, S): each writer's seq floor


def _dirs(cfg) -> tuple[str, str]:
    d = cfg.durability
    return d.journal_dir, d.snapshot_dir


def _apply_admin_log(store, path: str, after_ns: int, before_mono_ns: int | None = None) -> tuple[int, str]:
    """Re-apply list/state/halt changes logged after ``after_ns`` (wall clock, a snapshot's
    created_ns) and, with ``before_mono_ns`` (explain: an event's arrival_ns, CLOCK_MONOTONIC),
    before it by their ``mono_ns``; a record without one (an older engine's) cannot be placed
    and is applied, with a note -> (how many, notes on a torn last record or such records, or
    ""). Every record is checked first (engine.admin_log): a damaged or out-of-sequence one
    raises RecoveryError naming the file, line, offset and seq."""
    try:
        records, torn, _ = read(path)
    except AdminLogCorrupt as e:
        raise RecoveryError(f"{e}. The operator's list/state/halt changes cannot be replayed "
                            f"exactly; check the file (each line is JSON, then its blake2b-128)") from None
    note = (f"; dropped an unfinished last admin record ({torn.nbytes} bytes at offset={torn.offset} "
            f"of {path}, never acknowledged)" if torn else "")
    fs, n, unplaced = store.fs, 0, 0
    for e in records:
        if e["time_ns"] <= after_ns:
            continue
        if before_mono_ns is not None:
            if not isinstance(e.get("mono_ns"), int):
                unplaced += 1
            elif e["mono_ns"] >= before_mono_ns:
                continue
        cmd = e.get("cmd", "")
        if cmd in ("halt", "resume"):
            fs.set_halt(cmd == "halt")
        elif cmd == "set-state":
            fs.set_state(e["name"], e["key"], STATE_NAMES[e["state"]])
        elif cmd.startswith("list-"):
            arr = fs.array(f"fl_{e['name']}")
            cur, vals = list_values(arr), as_values(arr, e["values"])
            new = {"list-add": np.union1d(cur, vals), "list-remove": np.setdiff1d(cur, vals),
                   "list-replace": np.unique(vals)}[cmd]
            fs.replace_list(e["name"], as_values(arr, new))
        n += 1
    if unplaced:
        note += (f"; {unplaced} admin change(s) without mono_ns (an older engine's) applied, their "
                 f"order relative to the event unknown")
    return n, note


def recover_features(cfg, store, rs) -> Recovered | None:
    """Rebuild ``store`` (freshly created, zeroed tables) from disk. Returns what it did, or
    None when there was nothing to recover. A corrupt journal record raises
    JournalCorruptError (file, offset, seq) unless journal.skip_corrupt_records is set."""
    if not cfg.durability.journal_enabled:
        return None
    jdir, sdir = _dirs(cfg)
    has_snap = os.path.isdir(sdir) and SnapshotStore(sdir).paths()
    if not (os.path.isdir(jdir) and list_writers(jdir)) and not has_snap:
        return None
    arrays = dict(zip(store.fs.arg_names(), store.fs.arrays()))
    seen = {"snap": None}

    def restore(snap) -> None:
        seen["snap"] = snap
        if snap is None:
            return
        for name, arr in arrays.items():        # every table checked before any is written:
            got = snap.arrays.get(name)           # a refused snapshot leaves them initialised
            if got is None or got.shape != arr.shape or got.dtype != arr.dtype:
                raise StateLayoutChanged(
                    f"snapshot {snap.path}: table {name} does not match the configured features "
                    f"(config changed?); not restored, features start empty")
        for name, arr in arrays.items():
            arr[:] = snap.arrays[name]

    def apply(records, writer_ids) -> None:
        rs.apply_updates(records["event"], records["arrival_ns"], records["action"])

    ensure_private_dir(jdir, "journal.dir")
    skip = cfg.durability.skip_corrupt_journal_records
    try:
        reports = recover_all(sdir, jdir, apply, event_dtype=cfg.schema.dtype,
                              schema_hash=cfg.schema.hash, restore=restore, skip_corrupt=skip)
    except RecoveryError as e:
        raise RecoveryError(f"{e}. Feature state cannot be rebuilt exactly; move {jdir} and {sdir} "
                            f"aside to start with empty state") from None
    except StateLayoutChanged as e:         # raised by restore() before it wrote anything
        return Recovered(str(e))
    snap = seen["snap"]
    admin, torn = _apply_admin_log(store, os.path.join(jdir, "admin.log"), snap.created_ns if snap else 0)
    replayed = sum(r.replayed for r in reports.values())
    refused = next(iter(reports.values())).refused if reports else ()
    notices = [f"snapshot refused, recovery used an older one or none: {e}" for e in refused]
    corrupt = 0
    for w, r in reports.items():
        for c in r.corrupt:
            held = c.seq + c.count - 1 <= r.snapshot_seq
            notices.append(f"corrupt journal record(s) {'held by the snapshot, nothing lost' if held else 'SKIPPED (journal.skip_corrupt_records), their events are not counted'}: {c}")
            corrupt += c.count
    return Recovered(f"recovered feature state: snapshot {snap.path if snap else 'none'} + {replayed} "
                     f"journal records from {len(reports)} worker(s) + {admin} admin change(s)"
                     + (f"; {corrupt} corrupt journal record(s)" if corrupt else "") + torn,
                     tuple(notices), corrupt, len(refused),
                     tuple((w, r.snapshot_seq) for w, r in reports.items()))


class StateRecovery:
    """The supervisor's feature-state recovery: at start, before any worker runs
    (``at_start``), and after a worker died, with the others held (``after_crash``). What
    each found is logged and counted into the control block (``count_into``: it exists only
    after the first recovery, which is held until then)."""

    def __init__(self, cfg, features, log):
        self.cfg = cfg
        self.features = features            # shm.featurestore.FeatureStore
        self.log = log
        self.block = None                   # the control block, once count_into gave it
        self.counts = (0, 0)                # corrupt journal records, refused snapshots
        self.seq_floors: dict[int, int] = {}   # writer -> the recovered snapshot's seq

    def at_start(self, rs) -> None:
        """Feature state = last good snapshot + every journal record after it (engine.recovery),
        then the admin changes logged after the snapshot."""
        done = recover_features(self.cfg, self.features, rs)
        if done:
            self._report(done)

    def after_crash(self, paused_workers, rs) -> None:
        """After a worker died: its kernel may have updated tables for events it never
        journaled (and it may have died holding a slot lock). With the other workers held
        (``paused_workers()``), re-initialise the tables and rebuild them from snapshot +
        journals; its successor then re-decides only what was never journaled
        (engine.worker.serve_journaled_tail)."""
        if self.features.empty or not self.cfg.durability.journal_enabled:
            return
        with paused_workers():
            self.features.reinit()
            done = recover_features(self.cfg, self.features, rs)
        if done:
            self._report(done, "worker crash: ")
        else:
            self.log("risk-engine: worker crash: feature state re-initialised (empty journal)")

    def _report(self, done: Recovered, prefix: str = "") -> None:
        """Log a recovery's summary and each refused snapshot and corrupt journal run; count
        them (risk_journal_corrupt_records_total, risk_snapshot_refused_total)."""
        for line in done.notices:
            self.log(f"risk-engine: {line}")
        self.log(f"risk-engine: {prefix}{done.summary}")
        c, r = self.counts
        self.counts = (c + done.corrupt_records, r + done.refused_snapshots)
        self.seq_floors = dict(done.snapshot_seqs)
        if self.block is not None:
            self.count_into(self.block)

    def count_into(self, block) -> None:
        self.block = block
        corrupt, refused = self.counts
        block.view("supervisor.journal_corrupt_records")[0] = corrupt
        block.view("supervisor.snapshots_refused")[0] = refused
        for w, seq in self.seq_floors.items():   # a worker's journal never restarts at or
            if w < block.n_workers:              # below its snapshot's seq (open_journal)
                cell = block.worker(w, "journal_seq")
                cell[0] = max(int(cell[0]), seq)
