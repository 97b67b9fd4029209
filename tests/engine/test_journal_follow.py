"""A follower of a live journal (``JournalReader(scan_rows=N)``, what the cluster's journal
tailer reads with every few milliseconds): the same committed records as a full reader, but
at the journal's end it looks only N rows past the last committed record for records that
would make the invalid ones before them corruption, instead of the rest of the segment
(16 MiB by default: 18-45 ms per read of an idle writer). Real files in a tmp dir."""
import os

import pytest

import engine.journal_reader as journal_reader
from engine.journal import HEADER_SIZE, JournalCorruptError, JournalReader, list_segments
from tests.engine.test_journal import RS, SCHEMA, check_records, corrupt, fill

SEGMENT_RECORDS = 20_000         # a segment far longer than the follower's look-ahead
SCAN = 64


def follower(d, scan_rows=SCAN):
    return JournalReader(str(d), SCHEMA.dtype, SCHEMA.hash, 0, scan_rows=scan_rows)


@pytest.fixture
def preads(monkeypatch):
    """Bytes read by the reader's look-ahead (its os.pread calls)."""
    got = []
    real = os.pread

    def counting(fd, n, off):
        data = real(fd, n, off)
        got.append(len(data))
        return data
    monkeypatch.setattr(journal_reader.os, "pread", counting)
    return got


def test_a_follower_reads_every_committed_record_and_looks_only_scan_rows_past_the_end(tmp_path, preads):
    fill(tmp_path, [30, 7], seg_records=SEGMENT_RECORDS)
    full = JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0)
    check_records(full.read_all())
    assert sum(preads) >= (SEGMENT_RECORDS - 37) * RS      # the rest of the segment's zeros
    preads.clear()
    r = follower(tmp_path)
    recs = r.read_all()
    check_records(recs)
    assert len(recs) == 37 and r.last_seq == 37 and r.torn is None
    assert sum(preads) <= SCAN * RS
    preads.clear()
    assert list(r.iter_batches(38)) == [] and r.last_seq == 37   # at the end: nothing new
    assert sum(preads) <= SCAN * RS


def test_a_follower_still_finds_a_zeroed_record_with_committed_ones_after_it(tmp_path):
    """Within its look-ahead, a zeroed record followed by committed ones is corruption for the
    follower too, reported with file, offset and seq like a full read."""
    fill(tmp_path, [60], seg_records=SEGMENT_RECORDS)
    path = list_segments(str(tmp_path), 0)[0][1]
    off = HEADER_SIZE + 49 * RS                            # seq 50: 10 committed records after it
    corrupt(path, off, bytes(RS))
    for r in (follower(tmp_path), JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0)):
        with pytest.raises(JournalCorruptError, match=f"offset={off} seq=50:"):
            r.read_all()


def test_a_zeroed_run_longer_than_the_look_ahead_stops_the_follower_before_it(tmp_path):
    """The trade: a zeroed run longer than ``scan_rows`` looks like the journal's end to the
    follower, which stops before it (it never reads past it, so nothing after it is
    published or resolved); a full reader (recovery, replay) reports it."""
    fill(tmp_path, [200], seg_records=SEGMENT_RECORDS)
    path = list_segments(str(tmp_path), 0)[0][1]
    corrupt(path, HEADER_SIZE + 99 * RS, bytes(RS * (SCAN + 1)))   # seqs 100..164 zeroed
    r = follower(tmp_path)
    recs = r.read_all()
    check_records(recs)
    assert len(recs) == 99 and r.last_seq == 99
    with pytest.raises(JournalCorruptError, match="seq=100..164: zero record followed by data"):
        JournalReader(str(tmp_path), SCHEMA.dtype, SCHEMA.hash, 0).read_all()
