"""The engine's fixed memory, checked against the machine before anything is created.

Everything big is sized by the config and allocated once: the feature tables (shared
memory, reserved page by page at creation), one copy of them for snapshots (the
supervisor's own buffers, engine.snapshot_coordinator), every worker's request
and response rings (shared memory, faulted in by the worker) and the ingress's idempotency
window (faulted in at start). A config whose sum the machine does not have now is refused
at start with the parts named; found out later, it would be SIGBUS in a worker (a tmpfs page
that cannot be backed) or the OOM killer taking some process of the host.
"""
from __future__ import annotations

from ingress.dedup import IdempotencyWindow
from shm.featurestore import table_bytes
from shm.rings import ring_bytes
from shm.segment import SegmentError, check_room


def plan(cfg, n_workers: int) -> tuple[dict, dict]:
    """(shared, private): bytes by what, for ``n_workers`` workers."""
    tables = sum(table_bytes(cfg).values())
    ing = cfg.ingress
    shared = {"feature tables": tables, f"rings of {n_workers} worker(s)": n_workers * ring_bytes(cfg)}
    private = {"snapshot copies of the tables": tables,
               "idempotency window": IdempotencyWindow.memory_bytes(
                   ing.dedup_window_s * 1_000_000_000, ing.dedup_max_entries, ing.dedup_max_bytes)}
    return shared, private


def check_memory(cfg, n_workers: int) -> None:
    """SegmentError naming the parts if the planned memory does not fit (shm.segment.check_room)."""
    shared, private = plan(cfg, n_workers)
    try:
        check_room(shared, private)
    except SegmentError as e:
        hint = "lower rings.capacity or ingress.dedup_max_entries / dedup_max_bytes"
        if max({**shared, **private}.items(), key=lambda kv: kv[1])[0] == "feature tables":
            big = sorted(table_bytes(cfg).items(), key=lambda kv: -kv[1])[:3]
            hint = "largest tables: " + ", ".join(
                f"{n[3:] if n[2] == '_' else n} {b / 2**20:.0f} MiB" for n, b in big) + "; lower their `capacity`"
        raise SegmentError(f"memory: {e} ({hint})") from None
