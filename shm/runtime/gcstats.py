"""GC pause telemetry: a gc.callbacks hook that adds each collection's pause to a histogram
view in the control block (read by the exporter as risk_gc_pause_seconds)."""
from __future__ import annotations

import atexit
import gc
import time

import numpy as np

from shm.control import GC_BOUNDS_NS, observe


def _install(hist: np.ndarray) -> None:
    """Record every collection from now on in ``hist``, until the interpreter exits. The hook
    is removed by atexit, which runs before the interpreter tears its modules down: a
    collection during that teardown would otherwise call it with half of them gone (seen at
    Ctrl-C as "Exception ignored in gc callback", a ModuleNotFoundError or an
    AttributeError on None)."""
    started = [0]
    clock = time.perf_counter_ns

    def _cb(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = clock()
        elif started[0]:
            observe(hist, GC_BOUNDS_NS, clock() - started[0])
            started[0] = 0

    gc.callbacks.append(_cb)
    atexit.register(_uninstall, _cb)


def _uninstall(cb) -> None:
    if cb in gc.callbacks:
        gc.callbacks.remove(cb)


def freeze_after_warmup(hist: np.ndarray | None = None) -> None:
    """Collect once, then move every object to the permanent generation: a full collection
    later costs ~0 ms instead of ~100 ms. Gen0 stays on. Call it before
    the process reports ready (60-125 ms here: no request should wait for it). ``hist``:
    from then on record every collection's pause there (risk_gc_pause_seconds), so the
    start-up collection, which no request saw, is not among them. The histogram call is
    made once on a scratch copy first: compiled or loaded from the cache now, not in the
    first pause a request sees (the workers call it per batch too)."""
    if hist is not None:
        observe(np.zeros_like(hist), GC_BOUNDS_NS, 0)
    gc.collect()
    gc.freeze()
    if hist is not None:
        _install(hist)
