"""Crash recovery: state = last good snapshot + replay of the journal records after it.

Protocol (docs/DURABILITY.md): the worker takes a snapshot between two batches, after
``JournalWriter.sync()``, recording ``journal_seq = {writer_id: S}`` where S is the last
appended record; the snapshot therefore equals the state after applying records 1..S, and S is
durable in the journal before the snapshot exists. Recovery restores that state and applies
records S+1.. in order, so every committed record is applied exactly once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.journal import JournalGapError, JournalReader, TornTail
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


def recover(snapshot_dir: str, journal_dir: str, apply_batch: Callable[[np.ndarray], object], *,
            event_dtype: np.dtype, schema_hash: int,
            restore: Callable[[Snapshot | None], object], writer_id: int = 0,
            batch_records: int = 65536) -> RecoveryReport:
    """Rebuild one writer's state: ``restore(snapshot or None)`` then ``apply_batch(records)``.

    ``restore`` receives the newest snapshot that validates (None: start from empty state);
    ``apply_batch`` receives journal records (journal_dtype) with seq > S, in order, as
    batches of at most ``batch_records``. Raises RecoveryError when the journal does not
    hold record S (it was lost or retention removed it) or no longer starts at seq 1 when
    there is no snapshot; JournalCorruptError propagates for a corrupt non-final segment.
    """
    snap, refused = SnapshotStore(snapshot_dir).load_latest()
    seq = snap.journal_seq.get(writer_id, 0) if snap is not None else 0
    reader = JournalReader(journal_dir, event_dtype, schema_hash, writer_id)
    where = f"snapshot={snap.path if snap else None} journal={journal_dir} writer={writer_id}"
    segs = reader.segments()
    if seq == 0 and segs and segs[0].first_seq != 1:
        raise RecoveryError(f"{where}: no snapshot and the journal starts at seq {segs[0].first_seq}, not 1")
    restore(snap)
    replayed = 0
    seen_s = seq == 0
    try:
        for batch in reader.iter_batches(from_seq=max(seq, 1), batch_records=batch_records):
            if not seen_s:                       # the first record must be S itself: proves
                seen_s = True                    # the journal still holds what the snapshot has
                batch = batch[1:]
            if len(batch):
                apply_batch(batch)
                replayed += len(batch)
    except JournalGapError as e:
        raise RecoveryError(f"{where}: snapshot seq {seq} is not in the journal ({e})") from None
    if not seen_s:
        raise RecoveryError(f"{where}: the snapshot includes seq {seq} but the journal ends at "
                            f"seq {reader.last_seq}")
    return RecoveryReport(snap.path if snap else None, seq, tuple(refused), replayed,
                          reader.last_seq, reader.torn)
