"""Crash recovery: state = last good snapshot + replay of the journal records after it.

Protocol (docs/DURABILITY.md): the worker takes a snapshot between two batches, after
``JournalWriter.sync()``, recording ``journal_seq = {writer_id: S}`` where S is the last
appended record; the snapshot therefore equals the state after applying records 1..S, and S is
durable in the journal before the snapshot exists. Recovery restores that state and applies
records S+1.. in order, so every committed record is applied exactly once.

A corrupt record among them (one that later records outlive) stops recovery with
``JournalCorruptError`` naming file, offset and seq, before anything after it is lost; with
``skip_corrupt`` exactly that run is skipped and reported (``RecoveryReport.corrupt``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.journal import (CorruptRecords, JournalGapError, JournalReader, TornTail, iter_merged,
                            list_segments, list_writers)
from engine.snapshot import Snapshot, SnapshotStore


class RecoveryError(RuntimeError):
    """Snapshot and journal do not fit together: exact recovery is impossible."""


@dataclass(frozen=True)
class RecoveryReport:
    snapshot_path: str | None     # None: no valid snapshot, replayed from the journal's start
    snapshot_seq: int             # S: records <= S came from the snapshot
    refused: tuple[str, ...]      # errors of newer snapshots that failed validation
    replayed: int                 # records applied from the journal (seq S+1 .. last_seq)
    last_seq: int                 # last committed journal record; the writer continues after it
    torn: TornTail | None         # ignored torn tail of the journal, if any
    corrupt: tuple[CorruptRecords, ...] = ()   # corrupt runs met: skipped (skip_corrupt), or
                                  # before S in the newest segment (the snapshot holds them)


def _check_holds(reader: JournalReader, seq: int, where: str) -> None:
    """Raise RecoveryError unless the journal can continue a state that includes records 1..seq:
    record seq itself is present (seq > 0), or the journal starts at 1 (seq == 0). A corrupt
    record S raises JournalCorruptError, or with skip_corrupt counts as present."""
    reader.floor_seq = seq                 # record S was written: invalid there is corruption
    segs = reader.segments()
    if seq == 0:
        if segs and segs[0].first_seq != 1:
            raise RecoveryError(f"{where}: no snapshot seq and the journal starts at seq "
                                f"{segs[0].first_seq}, not 1")
        return
    try:
        first = next(reader.iter_batches(from_seq=seq, batch_records=1), None)
    except JournalGapError as e:
        raise RecoveryError(f"{where}: snapshot seq {seq} is not in the journal ({e})") from None
    if first is None and reader.last_seq < seq:
        raise RecoveryError(f"{where}: the snapshot includes seq {seq} but the journal ends at "
                            f"seq {reader.last_seq}")


def recover(snapshot_dir: str, journal_dir: str, apply_batch: Callable[[np.ndarray], object], *,
            event_dtype: np.dtype, schema_hash: int,
            restore: Callable[[Snapshot | None], object], writer_id: int = 0,
            batch_records: int = 65536, skip_corrupt: bool = False) -> RecoveryReport:
    """Rebuild one writer's state: ``restore(snapshot or None)`` then ``apply_batch(records)``.

    ``restore`` receives the newest snapshot that validates (None: start from empty state);
    ``apply_batch`` receives journal records (journal_dtype) with seq > S, in order, as
    batches of at most ``batch_records``. Raises RecoveryError, before ``restore`` is called,
    when the journal does not hold record S (lost, or removed by retention) or no longer starts
    at seq 1 when there is no snapshot. JournalCorruptError (a corrupt record that later ones
    outlive, or a corrupt non-final segment; ``skip_corrupt``: skipped and reported instead)
    propagates from the replay, after ``restore``: the caller's state is then partial.
    """
    snap, refused = SnapshotStore(snapshot_dir).load_latest()
    seq = snap.journal_seq.get(writer_id, 0) if snap is not None else 0
    corrupt: list = []
    reader = JournalReader(journal_dir, event_dtype, schema_hash, writer_id,
                           skip_corrupt=skip_corrupt, corrupt=corrupt)
    _check_holds(reader, seq, f"snapshot={snap.path if snap else None} journal={journal_dir} "
                              f"writer={writer_id}")
    restore(snap)
    replayed = 0
    reader.floor_seq = 0
    for batch in reader.iter_batches(from_seq=seq + 1, batch_records=batch_records):
        apply_batch(batch)
        replayed += len(batch)
    _scan_newest(journal_dir, event_dtype, schema_hash, writer_id, seq, corrupt)
    return RecoveryReport(snap.path if snap else None, seq, tuple(refused), replayed,
                          max(reader.last_seq, seq), reader.torn, _dedup(corrupt))


def _scan_newest(journal_dir: str, event_dtype, schema_hash: int, writer_id: int, seq: int,
                 corrupt: list) -> JournalReader:
    """Read the newest segment from its start, as the reopening writer walks it: corrupt runs
    the snapshot holds (seq <= S, not replayed) go to ``corrupt``, reported, not fatal (nothing
    is lost). Returns the reader (``last_seq``, ``torn``)."""
    r = JournalReader(journal_dir, event_dtype, schema_hash, writer_id, skip_corrupt=True,
                      floor_seq=seq, corrupt=corrupt)
    if list_segments(journal_dir, writer_id):
        r.last_committed_seq()
    return r


def _dedup(runs) -> tuple[CorruptRecords, ...]:
    seen, out = set(), []
    for r in runs:
        if (r.path, r.offset) not in seen:
            seen.add((r.path, r.offset))
            out.append(r)
    return tuple(out)


def recover_all(snapshot_dir: str, journal_dir: str,
                apply_batch: Callable[[np.ndarray, np.ndarray], object], *,
                event_dtype: np.dtype, schema_hash: int,
                restore: Callable[[Snapshot | None], object], writers: list[int] | None = None,
                batch_records: int = 65536, skip_corrupt: bool = False) -> dict[int, RecoveryReport]:
    """Rebuild state shared by several writers: one snapshot with ``journal_seq`` for each
    writer, then every writer's records after its S, merged by ``iter_merged`` order.

    ``apply_batch(records, writer_ids)``. ``writers`` defaults to every writer with segments
    plus every writer named in the snapshot. Raises RecoveryError and JournalCorruptError as
    ``recover`` does, per writer. Each report's ``corrupt`` also lists corrupt runs the
    snapshot already holds in the newest segment (what a reopening writer steps over).
    """
    snap, refused = SnapshotStore(snapshot_dir).load_latest()
    seqs = dict(snap.journal_seq) if snap is not None else {}
    ids = sorted(set(list_writers(journal_dir)) | set(seqs)) if writers is None else list(writers)
    where = f"snapshot={snap.path if snap else None} journal={journal_dir}"
    corrupt: dict[int, list] = {w: [] for w in ids}
    for w in ids:                                 # every S must still be in its journal
        _check_holds(JournalReader(journal_dir, event_dtype, schema_hash, w, skip_corrupt=skip_corrupt,
                                   corrupt=corrupt[w]), seqs.get(w, 0), f"{where} writer={w}")
    restore(snap)
    counts = dict.fromkeys(ids, 0)
    for recs, wid in iter_merged(journal_dir, event_dtype, schema_hash, ids,
                                 {w: seqs.get(w, 0) + 1 for w in ids}, batch_records,
                                 skip_corrupt=skip_corrupt, corrupt=corrupt):
        apply_batch(recs, wid)
        for w, c in zip(*np.unique(wid, return_counts=True)):
            counts[int(w)] += int(c)
    out = {}
    for w in ids:
        r = _scan_newest(journal_dir, event_dtype, schema_hash, w, seqs.get(w, 0), corrupt[w])
        out[w] = RecoveryReport(snap.path if snap else None, seqs.get(w, 0), tuple(refused),
                                counts[w], max(r.last_seq, seqs.get(w, 0)), r.torn, _dedup(corrupt[w]))
    return out
