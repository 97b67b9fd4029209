"""A worker process: drain its request ring in batches, one compiled-kernel call per batch,
publish the decisions to its response ring.

Started by the supervisor as ``python -m engine.worker --run-dir D --index I``. The loop does
one thing: drain, evaluate, publish, then idle by the ring's strategy. Between two batches it
polls the control block for a stop request or a new ruleset generation, and swaps the kernel
there, so no batch sees half a ruleset. A new generation is loaded on a background thread
(the compile comes from the kernel cache) and swapped in by reference between batches.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np

from engine import gcstats, procname, rundir
from engine.control import KERNEL_BOUNDS_NS, MAX_RULES, Block
from engine.rings import EngineRings
from engine.topology import pin_self
from engine.types import RESPONSE_SLOT_DTYPE
from shm.doorbell import EventfdDoorbell


class _Active:
    """The ruleset a worker evaluates with, and the counter rows it writes."""

    def __init__(self, ruleset, generation: int, block: Block, index: int, max_batch: int):
        self.ruleset = ruleset
        self.kernel = ruleset.kernel
        self.generation = generation
        row = generation % 2
        gens = block.worker(index, "row_generation")
        self.hits = block.rule_row(index, row, "rule_hits")[: max(ruleset.n_rules, 1)]
        self.errors = block.rule_row(index, row, "rule_errors")[: max(ruleset.n_rules, 1)]
        if gens[row] != generation:          # a new generation starts its row from zero;
            self.hits[:] = 0                 # a restarted worker keeps counting on its row
            self.errors[:] = 0
            gens[row] = generation
        words = max(1, (ruleset.n_rules + 63) // 64)
        self.bits = np.zeros((max_batch, words), dtype=np.uint64)


def _load_generation(run_dir: str, generation: int, schema):
    from rules import compile_ruleset
    spec = rundir.read_generation(run_dir, generation)
    rs = compile_ruleset(spec["files"], schema, thresholds=tuple(spec["thresholds"]),
                         on_error=spec["on_error"])
    if rs.n_rules > MAX_RULES:
        raise ValueError(f"ruleset has {rs.n_rules} rules, more than MAX_RULES={MAX_RULES}")
    rs.warm_up()
    return rs


def serve(run_dir: str, index: int) -> int:
    procname.set_role(f"worker {index}")
    plan = rundir.read_plan(run_dir)
    pin_self(plan["workers"][index]["cpu"])                 # before touching memory
    cfg = rundir.read_config(run_dir)
    block, block_seg = rundir.attach_control(run_dir, cfg)
    rings = EngineRings.attach(cfg, plan, index, EventfdDoorbell(plan["eventfd"]))
    rings.prefault()                                        # first touch after pinning
    gcstats.install(block.worker(index, "gc_hist"))
    max_batch = min(cfg.ingress.max_batch, cfg.rings.capacity)

    generation = int(block.view("supervisor.generation")[0])
    active = _Active(_load_generation(run_dir, generation, cfg.schema), generation, block, index, max_batch)
    block.worker(index, "generation")[0] = generation
    out = np.zeros(max_batch, dtype=RESPONSE_SLOT_DTYPE)
    gcstats.freeze_after_warmup()

    stop = block.view("supervisor.stop")
    want_gen = block.view("supervisor.generation")
    batches = block.worker(index, "batches")
    events = block.worker(index, "events")
    khist = block.worker(index, "kernel_hist")
    heartbeat = block.worker(index, "heartbeat_ns")
    reload_errors = block.worker(index, "reload_errors")
    pending: list = []               # [thread, generation, result-or-exception]
    req, resp, idle = rings.request, rings.response, rings.worker_idle

    while stop[0] < 2:                  # 1: ingress stops accepting; 2: workers stop
        v1, v2 = req.try_drain(max_batch)
        n = len(v1)
        if n == 0:
            heartbeat[0] = time.monotonic_ns()
            g = int(want_gen[0])
            if g != active.generation and not pending:
                pending = [None, g, None]
                pending[0] = threading.Thread(target=_background_load, daemon=True,
                                              args=(pending, run_dir, g, cfg.schema))
                pending[0].start()
            if pending and not pending[0].is_alive():
                if isinstance(pending[2], Exception):
                    reload_errors[0] += 1
                    print(f"risk-engine: worker {index}: generation {pending[1]} refused: {pending[2]}",
                          file=sys.stderr)
                else:                         # swap between two batches
                    active = _Active(pending[2], pending[1], block, index, max_batch)
                    block.worker(index, "generation")[0] = active.generation
                pending = []
            idle.wait()
            continue
        o = out[:n]
        o["token"] = v1["token"]
        o["generation"] = active.generation
        t0 = time.perf_counter_ns()
        active.kernel(v1["event"], o, active.bits[:n], active.hits, active.errors)
        dt = time.perf_counter_ns() - t0
        khist[int(np.searchsorted(KERNEL_BOUNDS_NS, dt // n))] += n
        khist[-1] += dt
        while not resp.try_publish(o):      # the ingress always drains; wait for room
            if stop[0]:
                break
            rings.response_full_idle.wait()
        req.release(n)                      # after publishing: a crash before this re-reads
        batches[0] += 1
        events[0] += n
    rings.close()
    block_seg.close()
    return 0


def _background_load(pending: list, run_dir: str, generation: int, schema) -> None:
    try:
        pending[2] = _load_generation(run_dir, generation, schema)
    except Exception as e:            # reported by the loop, which keeps the old ruleset
        pending[2] = e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="engine.worker")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--index", type=int, required=True)
    a = ap.parse_args(argv)
    return serve(a.run_dir, a.index)


if __name__ == "__main__":
    sys.exit(main())
