"""shm.runtime.gcstats: the GC pause hook records collections while the process runs, and is
gone before the interpreter tears its modules down (Ctrl-C printed "Exception ignored in gc
callback ... ModuleNotFoundError" from a collection during that teardown)."""
from __future__ import annotations

import subprocess
import sys

from bench.engine_proc import REPO

# Collections during interpreter shutdown: objects whose __del__ collects, held by modules
# that are torn down late (sys, numba, shm.control), as a worker's or the ingress's would be.
CHILD = """
import gc, sys
import numpy as np
import numba
import shm.control
from shm.runtime import gcstats
hist = np.zeros(len(shm.control.GC_BOUNDS_NS) + 2, np.int64)
gcstats.freeze_after_warmup(hist)
gc.collect()
assert hist[:-1].sum() >= 1, hist          # recorded while running
class CollectsWhenFreed:
    def __del__(self, collect=gc.collect):
        collect()
sys._late = CollectsWhenFreed()
numba._late = CollectsWhenFreed()
shm.control._late = CollectsWhenFreed()
print("ok", flush=True)
"""


def test_pauses_are_recorded_and_the_hook_is_gone_at_exit():
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr)
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr

