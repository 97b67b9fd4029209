"""The journal's housekeeping thread survives a defect in its own rounds: an exception that is
not a disk error counts as a failed sync (nothing more journaled, so nothing acknowledged as
durable, until a sync works), is reported, and the thread goes on syncing."""
from __future__ import annotations

import errno
import time

from engine.journal_housekeeper import JournalHousekeeper
from tests.engine.test_journal import batch, reader, writer


def wait(cond, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s                 # bounded
    while not cond():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.01)


def test_an_unexpected_error_in_a_sync_round_fails_closed_and_the_thread_goes_on(tmp_path, capsys):
    with writer(tmp_path, seg_records=1000, fsync="interval_ms", interval_ms=5) as w:
        hk = JournalHousekeeper(w)
        try:
            w.append_batch(batch(w, 10))
            wait(lambda: hk.syncs >= 1)
            real = w.sync_appended
            raised = []

            def broken():                       # a defect's exception, once
                if not raised:
                    raised.append(1)
                    raise ValueError("mmap closed or invalid")
                return real()
            w.sync_appended = broken
            wait(lambda: w.write_errors >= 1 and w._sync_failed)   # (not hk.errors: 0 after a good round)
            assert hk.thread.is_alive()
            # fail closed: unavailable until the appender's next try_reserve syncs again
            assert w.unavailable == errno.EIO and w._sync_failed
            wait(lambda: w.try_reserve(1))      # its retry (every RETRY_NS) syncs: back
            syncs = hk.syncs
            w.append_batch(batch(w, 10, 10))
            wait(lambda: hk.syncs > syncs)      # the thread still syncs
        finally:
            hk.stop()
    err = capsys.readouterr().err
    assert "journal housekeeping: ValueError: mmap closed or invalid" in err
    assert [int(r["event"]["account_id"]) for r in reader(tmp_path).read_all()] == list(range(20))
