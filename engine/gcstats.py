"""GC pause telemetry: a gc.callbacks hook that adds each collection's pause to a histogram
view in the control block (read by the exporter as risk_gc_pause_seconds)."""
from __future__ import annotations

import gc
import time

import numpy as np

from engine.control import GC_BOUNDS_NS, observe


def install(hist: np.ndarray) -> None:
    """Record every collection from now on: call it after ``freeze_after_warmup`` (that one
    runs before the process reports ready and no request waits for it)."""
    started = [0]

    def _cb(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        elif started[0]:
            observe(hist, GC_BOUNDS_NS, time.perf_counter_ns() - started[0])
            started[0] = 0

    gc.callbacks.append(_cb)


def freeze_after_warmup() -> None:
    """Collect once, then move every object to the permanent generation: a full collection
    later costs ~0 ms instead of ~100 ms (ENGINEERING.md §4). Gen0 stays on."""
    gc.collect()
    gc.freeze()
