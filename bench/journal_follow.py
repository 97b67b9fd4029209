"""What a read at a live writer's end costs: a full reader (it looks at the rest of the
segment for committed records after the end) against a follower (``scan_rows``, what the
cluster's journal tailer reads with: engine.cluster.tailer.SCAN_ROWS rows ahead). One writer,
a segment of ``--segment-mib`` (the default journal's 16 MiB) holding ``--records`` records;
per round each reader reads ``--reads`` times from one record before the end and from the
end (nothing new: an idle writer, what every full tailer step does), alternating.

    python -m bench.journal_follow [--segment-mib 16] [--records 1000] [--reads 50] [--rounds 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from engine.cluster.tailer import SCAN_ROWS
from engine.journal import JournalConfig, JournalReader, JournalWriter
from shm.schema import Schema

SCHEMA = Schema.build({"account_id": "u64", "amount": "f64"}, "account_id")


def read_ms(r: JournalReader, from_seq: int, reads: int) -> float:
    """Median ms of one read from ``from_seq`` (as the tailer reads: the first batch)."""
    ts = []
    for _ in range(reads):
        t0 = time.perf_counter()
        it = r.iter_batches(from_seq, 4096)
        next(it, None)
        it.close()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.journal_follow", description=__doc__.split("\n\n")[0])
    ap.add_argument("--segment-mib", type=int, default=16)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    print(f"a read at a writer's end: {a.segment_mib} MiB segment, {a.records} records; median ms of "
          f"{a.reads} reads per round (follower: {SCAN_ROWS} rows ahead)")
    print(f"{'round':>5s} {'reader':9s} {'1 new record':>13s} {'nothing new':>12s}")
    with tempfile.TemporaryDirectory() as d:
        cfg = JournalConfig(segment_bytes=a.segment_mib << 20, fsync="none")
        with JournalWriter(d, SCHEMA.dtype, SCHEMA.hash, 0, cfg) as w:
            b = w.empty_batch(a.records)
            b["event"]["account_id"] = np.arange(a.records, dtype=np.uint64)
            w.append_batch(b)
            end = w.last_seq
            for rnd in range(a.rounds):
                for name, scan in (("full", None), ("follower", SCAN_ROWS))[::1 if rnd % 2 == 0 else -1]:
                    r = JournalReader(d, SCHEMA.dtype, SCHEMA.hash, 0, scan_rows=scan)
                    print(f"{rnd + 1:5d} {name:9s} {read_ms(r, end, a.reads):13.3f} "
                          f"{read_ms(r, end + 1, a.reads):12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
