"""Convert a version-1 journal (records without client_id and request_id) to the current
format, offline, into a new directory (docs/DURABILITY.md, Journal format versions).

The version-1 records are read as recovery reads them (engine.journal_reader: checksums,
a torn tail ignored and reported, corruption refused) and written by the current writer
with the same writer ids and sequence numbers, so the snapshots taken against the old
journal still name the right records. The old format never recorded the request ids:
converted records carry client_id 0 and request_id 0. ``admin.log`` (the admin changes that
recovery and explain apply) is copied beside the records. The source is never modified.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np

from engine.journal import JournalConfig, JournalError, JournalWriter, list_writers
from engine.journal_reader import JournalReader

_COPIED = ("arrival_ns", "event", "score", "generation", "action", "flags")


@dataclass(frozen=True)
class UpgradeReport:
    writers: dict          # writer id -> (first seq, last seq, records)
    torn: list             # ignored torn tails, as text
    admin_log: bool        # admin.log copied

    def text(self) -> str:
        lines = [f"writer {w}: seq {a}..{b}, {n} record(s) converted" for w, (a, b, n) in
                 sorted(self.writers.items())]
        lines += [f"torn tail ignored: {t}" for t in self.torn]
        lines.append("admin.log copied" if self.admin_log else "no admin.log")
        return "\n".join(lines)


def upgrade(src: str, dst: str, event_dtype: np.dtype, schema_hash: int, config=None, *,
            batch_records: int = 65536) -> UpgradeReport:
    """Write the version-1 journal ``src`` as a current one into ``dst`` (absent or empty).
    Raises JournalError (JournalCorruptError for a corrupt record, JournalVersionError for a
    segment that is not version 1)."""
    writers = list_writers(src)
    if not writers:
        raise JournalError(f"journal {src}: no journal segments")
    if os.path.isdir(dst) and os.listdir(dst):
        raise JournalError(f"journal {dst}: not empty; convert into a new directory")
    cfg = config or JournalConfig()
    done, torn = {}, []
    for w in writers:
        r = JournalReader(src, event_dtype, schema_hash, w, version=1)
        first = r.segments()[0].first_seq
        with JournalWriter(dst, event_dtype, schema_hash, w, cfg, first_seq=first) as out:
            n = 0
            for b in r.iter_batches(batch_records=batch_records):
                new = out.empty_batch(len(b))          # client_id, request_id: 0 (never recorded)
                for f in _COPIED:
                    new[f] = b[f]
                out.append_batch(new)
                n += len(b)
            out.sync()
        done[w] = (first, first + n - 1, n)
        if r.torn is not None:
            torn.append(f"{r.torn.path}: offset={r.torn.offset} seq={r.torn.seq}: {r.torn.reason}")
    log = os.path.join(src, "admin.log")
    if os.path.exists(log):
        shutil.copy2(log, os.path.join(dst, "admin.log"))
        os.chmod(os.path.join(dst, "admin.log"), 0o600)
    return UpgradeReport(done, torn, os.path.exists(log))
