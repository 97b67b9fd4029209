"""bench.worker_step runs the real journal and worker code it names and reports one figure
per batch size; its shared memory is gone afterwards."""
from __future__ import annotations

import os

from bench.engine_proc import shm_entries
from bench.snapshot_delta import changed_pages
from bench.worker_step import PATHS, journal_append, worker_step
from shm.runtime.config import load_config


def test_journal_append_times_both_paths_per_batch_size():
    rows = journal_append(load_config(None), [1, 16], repeats=1)
    assert [r[0] for r in rows] == [1, 16]
    assert all(c > 0 and s > 0 for _, c, s in rows)


def test_worker_step_runs_batch_processor_and_cleans_up():
    instance = f"step{os.getpid() % 100000}"     # bench.worker_step's, one per path
    rows = worker_step(load_config(None), [4], repeats=1)
    assert len(rows) == 1 and rows[0][0] == 4 and set(rows[0][1]) == set(PATHS)
    assert all(wall > 0 and cpu >= 0 for wall, cpu in rows[0][1].values()), rows
    assert [shm_entries(instance + tag) for tag in "pfr"] == [[], [], []]


def test_snapshot_delta_counts_the_pages_that_differ():
    a = bytes(3 * 4096 + 10)
    b = bytearray(a)
    b[5000] = 1                                     # page 1
    b[-1] = 1                                       # the short last page
    assert changed_pages(a, bytes(b)) == (2, 4)
    assert changed_pages(a, a) == (0, 4)
