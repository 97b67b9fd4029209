"""Explain's replay (engine.explain): find the event in the journal, pick the snapshot to start
from, and rebuild the feature tables as they were just before the event (docs/EXPLAIN.md,
How it replays). Errors are ExplainError with stable codes."""
from __future__ import annotations

import os

import numpy as np

from engine.journal import (JournalCorruptError, JournalError, JournalReader, JournalVersionError,
                            iter_merged, list_writers)
from engine.snapshot import PREFIX, SUFFIX, SnapshotCorruptError, load_snapshot, load_snapshot_meta

REPLAY_BATCH = 65536


class ExplainError(RuntimeError):
    """Explain cannot answer; ``code`` is stable (docs/EXPLAIN.md), the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# --- reading the journal ---------------------------------------------------------------------

def _journal_call(fn, *args, **kw):
    """Run a journal read, mapping its errors to ExplainError codes."""
    try:
        return fn(*args, **kw)
    except JournalCorruptError as e:
        code = "SCHEMA_MISMATCH" if "schema_hash=0x" in str(e) else "JOURNAL_CORRUPT"
        raise ExplainError(code, str(e)) from None
    except JournalVersionError as e:
        raise ExplainError("JOURNAL_VERSION", str(e)) from None
    except JournalError as e:
        raise ExplainError("SEQ_NOT_IN_JOURNAL", str(e)) from None


def _record_at(journal_dir: str, schema, writer: int, seq: int):
    """The committed record ``seq`` of ``writer``, or None past the journal's end."""
    r = JournalReader(journal_dir, schema.dtype, schema.hash, writer)
    b = _journal_call(lambda: next(r.iter_batches(from_seq=seq, batch_records=1), None))
    return b[0].copy() if b is not None and len(b) else None


def find_event(journal_dir: str, schema, seq: int, writer: int | None):
    """(writer, record) of journal event ``seq``; ExplainError naming what is missing."""
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


# --- finding a request's events --------------------------------------------------------------

MAX_LISTED = 20                      # occurrences named in a REQUEST_AMBIGUOUS message
_U64_MAX = 2**64 - 1


def parse_request_key(text: str) -> tuple[int, int]:
    """``CLIENT_ID:REQUEST_ID`` (two decimal u64) -> (client_id, request_id); ValueError
    saying what is wrong."""
    c, sep, r = str(text).partition(":")
    if not sep or not (c.isascii() and c.isdigit() and r.isascii() and r.isdigit()) \
            or int(c) > _U64_MAX or int(r) > _U64_MAX:
        raise ValueError(f"request={str(text)[:64]!r}: must be CLIENT_ID:REQUEST_ID, two decimal "
                         f"integers in [0, 2**64-1]")
    return int(c), int(r)


def find_request(journal_dir: str, schema, client_id: int, request_id: int,
                 skip_corrupt: bool = False) -> list[tuple[int, int, int]]:
    """(arrival_ns, writer, seq) of every journaled event carrying (client_id, request_id),
    in the journal's merged order (arrival, then writer, then seq). One pass over every
    writer's retained journal, two column compares per batch."""
    writers = list_writers(journal_dir)
    if not writers:
        raise ExplainError("JOURNAL_NOT_FOUND", f"journal={journal_dir!r}: no journal files")
    cid, rid = np.uint64(client_id), np.uint64(request_id)
    out = []
    for w in writers:
        it = JournalReader(journal_dir, schema.dtype, schema.hash, w,
                           skip_corrupt=skip_corrupt).iter_batches(batch_records=REPLAY_BATCH)
        while (b := _journal_call(next, it, None)) is not None:
            hit = np.flatnonzero((b["request_id"] == rid) & (b["client_id"] == cid))
            out += [(int(b["arrival_ns"][i]), w, int(b["seq"][i])) for i in hit]
    return sorted(out)


def request_events(journal_dir: str, schema, client_id: int, request_id: int,
                   skip_corrupt: bool = False) -> tuple[int, list[tuple[int, int]]]:
    """(arrival_ns, [(writer, seq), ...]) of the one request (client_id, request_id) in the
    journal. The ingress stamps a request's events with one arrival time, so each distinct
    arrival is one request: more than one is REQUEST_AMBIGUOUS, naming each one's events."""
    found = find_request(journal_dir, schema, client_id, request_id, skip_corrupt)
    key = f"client_id={client_id} request_id={request_id}"
    if not found:
        raise ExplainError("REQUEST_NOT_IN_JOURNAL", f"{key}: no journaled event carries it in "
                           f"journal={journal_dir!r}. A request refused with an error, answered "
                           f"from the idempotency window (a retry) or with a default decision "
                           f"(deadline, overload, worker lost, journal unavailable) journals nothing; "
                           f"events before the retained journal are gone")
    by_arrival: dict[int, list] = {}
    for a, w, s in found:
        by_arrival.setdefault(a, []).append((w, s))
    if len(by_arrival) > 1:
        why = ("client_id 0 is never deduplicated, so its request ids may repeat" if client_id == 0
               else "the id was reused after the idempotency window (ingress.dedup_window_s)")
        listed = [f"arrival_ns={a}: " + ", ".join(f"writer={w} seq={s}" for w, s in ev[:8])
                  + (f" and {len(ev) - 8} more" if len(ev) > 8 else "")
                  for a, ev in list(by_arrival.items())[:MAX_LISTED]]
        more = len(by_arrival) - MAX_LISTED
        raise ExplainError("REQUEST_AMBIGUOUS", f"{key}: {len(by_arrival)} requests in the journal "
                           f"carry it ({why}): " + "; ".join(listed)
                           + (f"; and {more} more" if more > 0 else "")
                           + "; explain one event with --seq N --writer W")
    (arrival, events), = by_arrival.items()
    return arrival, events


# --- rebuilding the tables -----------------------------------------------------------------

def _pick_snapshot(snapshot_dir, journal_dir, schema, writer: int, seq: int, arrival_ns: int,
                   notes: list):
    """The newest valid snapshot every record of which is merged before the event, or None."""
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
    for w in list_writers(journal_dir):
        if from_seqs.get(w, 1) > 1:
            continue
        segs = _journal_call(JournalReader(journal_dir, cfg.schema.dtype, cfg.schema.hash, w).segments)
        if segs and segs[0].first_seq != 1:
            raise ExplainError("SEQ_NOT_IN_JOURNAL", f"writer={w}: the retained journal starts at "
                               f"seq {segs[0].first_seq} and no usable snapshot holds the records "
                               f"before it; the event's features cannot be rebuilt exactly")
