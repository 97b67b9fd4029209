"""The journal's file-system work in a worker, on a thread of its own (JournalHousekeeper)."""
from __future__ import annotations

import errno
import sys
import threading
import traceback

from shm.runtime.procname import name_thread

HOUSEKEEP_ZERO_BYTES = 4 << 20      # zero-fill per round: up to 400 MB/s at 10 ms rounds, far
                                    # above what a worker appends (34 MB/s at 250k events/s)


class JournalHousekeeper:
    """The journal's file-system work, off the worker's main thread: every interval_ms (10 ms
    when the policy has none) publish the segment a rotation switched to (fsync of its
    predecessor, rename, directory fsync: JournalWriter.publish_pending), sync the records
    appended to the current segment (fsync=interval_ms: JournalWriter.sync_appended), then
    ``JournalWriter.housekeep`` (pre-fault the pages ahead,
    zero-fill the next segment, unmap rotated ones, retention). Each of these can wait on the
    disk for hundreds of ms, which on the main thread would hold whole batches past their
    deadline; os.fsync, the msync and the populate (both ctypes) release the GIL. Loss window
    on power failure with interval_ms: about interval_ms plus one sync."""

    def __init__(self, journal):
        self.journal = journal
        journal.background = True
        self.fsync = journal.config.fsync == "interval_ms"
        self.interval_s = (journal.config.interval_ms or 10) / 1000
        self.stopped = threading.Event()
        self.syncs = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="journal-housekeeper")
        self.thread.start()

    def _run(self) -> None:
        name_thread("journal")
        while not self.stopped.wait(self.interval_s):
            try:
                self.journal.publish_pending()      # a rotation's successor, its predecessor
                if self.fsync:                      # made durable first
                    self._sync()
            except OSError as e:            # records not durable: journal nothing more until
                self._error(e)              # a sync works (JournalWriter.try_reserve)
                self.journal.note_error(e, sync=True)
                continue
            except Exception as e:          # noqa: BLE001  a defect, not the disk: the same, so the
                self._unexpected(e)         # thread goes on and the records are not acknowledged
                continue                    # as durable meanwhile (JOURNAL_UNAVAILABLE)
            try:
                self.journal.housekeep(HOUSEKEEP_ZERO_BYTES)
            except OSError as e:            # the next segment cannot be allocated (full disk):
                self._error(e)              # the appender's try_reserve meets it when it needs
                continue                    # that segment; retried every round meanwhile
            except Exception as e:          # noqa: BLE001  a defect: reported, retried next round
                self._error(e)
                continue
            self.errors = 0

    def _error(self, e: Exception) -> None:
        self.errors += 1
        if self.errors == 1:                # once per run of failures
            print(f"risk-engine: journal housekeeping: {type(e).__name__}: {e}", file=sys.stderr)
            if not isinstance(e, OSError):
                traceback.print_exception(e, file=sys.stderr)

    def _unexpected(self, e: Exception) -> None:
        """Publishing or syncing raised something other than a disk error (a defect): before,
        it ended the thread and the syncs with it, silently, while events went on being
        acknowledged. Now it counts as a failed sync (EIO): nothing more is journaled, so
        nothing more acknowledged, until a round's sync works again."""
        self._error(e)
        self.journal.note_error(OSError(errno.EIO, f"journal housekeeping: {type(e).__name__}: {e}"),
                                sync=True)

    def _sync(self) -> None:
        if self.journal.sync_appended():    # the records' byte range (msync), not the file
            self.syncs += 1

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2)
