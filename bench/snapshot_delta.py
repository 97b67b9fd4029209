"""How much of a snapshot changes between two snapshots: what a page-delta format could save.

    python -m bench.snapshot_delta [--events 1000]

Starts an engine (default config, one worker), takes a snapshot (admin ``snapshot``), sends
``--events`` random-key events, takes a second one, and counts the 4 KiB pages that differ
between the two files (docs/DURABILITY.md, "Disk use, retention and gc").
"""
from __future__ import annotations

import argparse

import numpy as np

from bench.engine_proc import EngineProcess
from bench.events import random_events
from engine.admin_client import request
from ingress.client import Client
from ingress.jsonevents import EventConverter
from shm.runtime.config import load_config

PAGE_BYTES = 4096
BATCH = 100


def changed_pages(a: bytes, b: bytes) -> tuple[int, int]:
    """(pages that differ, pages) of two files compared 4 KiB page by page."""
    n = max(len(a), len(b))
    pad = (-n) % PAGE_BYTES
    x = np.frombuffer(a.ljust(n + pad, b"\0"), np.uint8).reshape(-1, PAGE_BYTES)
    y = np.frombuffer(b.ljust(n + pad, b"\0"), np.uint8).reshape(-1, PAGE_BYTES)
    return int((x != y).any(axis=1).sum()), len(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.snapshot_delta", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1000, help="random-key events between the snapshots")
    a = ap.parse_args(argv)
    schema = load_config().schema
    eng = EngineProcess(workers=1, own_session=False).start()
    try:
        first = request(eng.admin_bind, {"cmd": "snapshot"}, 120_000)["path"]
        before = open(first, "rb").read()
        events = EventConverter(schema).to_events(random_events(np.random.default_rng(1), schema, a.events))
        with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0) as c:
            for i in range(0, len(events), BATCH):
                c.evaluate_batch(events[i:i + BATCH])
        second = request(eng.admin_bind, {"cmd": "snapshot"}, 120_000)["path"]
        diff, pages = changed_pages(before, open(second, "rb").read())
    finally:
        eng.close()
    print(f"{a.events} events: {diff} of {pages} pages of 4 KiB differ ({100 * diff / pages:.1f}%; "
          f"a page delta would be about {diff * PAGE_BYTES / 1e6:.1f} MB of a {len(before) / 1e6:.1f} MB snapshot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
