"""The workers taking up a published generation. A reload is answered when every live worker
serves it, not when it is published: a worker loads the new kernel from the cache on a
thread of its own and swaps it in between two batches, so for a moment after publication
the old generation still decides (each reply says which). `risk-engine reload` returning 0
means the next request is decided by the new rules.

A worker that refuses the generation (its log says why) or does not take it up within
SWITCH_TIMEOUT_S makes the reload's outcome a refusal naming the workers and what they
serve: the engine then runs two generations side by side, which the operator must hear of.
A worker that dies meanwhile is left out: its successor loads the serving generation.
"""
from __future__ import annotations

import time

SWITCH_TIMEOUT_S = 60.0     # loading a cached kernel takes ~0.2 s; a loaded machine, far more


class Switchover:
    """Generation ``generation`` was just published; ``done(outcome)`` callbacks wait for the
    workers. ``poll()`` -> None while they load it, else the outcome to tell: ``ok`` as is,
    or the refusal's text and code."""

    def __init__(self, block, generation: int, ok: str, callbacks: list):
        self.block = block
        self.generation = generation
        self.ok = ok
        self.callbacks = callbacks
        self.deadline = time.monotonic() + SWITCH_TIMEOUT_S
        self.errors = [int(block.worker(w, "reload_errors")[0]) for w in range(block.n_workers)]

    def poll(self) -> tuple[str, str | None] | None:
        """(text, None) once every live worker serves the generation; (text, code) if one
        refused it or the deadline passed; None while waiting."""
        b = self.block
        alive = b.view("supervisor.worker_alive")
        refused, behind = [], []
        for w in range(b.n_workers):
            if not alive[w]:
                continue
            serving = int(b.worker(w, "generation")[0])
            if int(b.worker(w, "reload_errors")[0]) > self.errors[w] and serving < self.generation:
                refused.append(f"worker {w} (serving generation {serving})")
            elif serving < self.generation:
                behind.append(f"worker {w} (serving generation {serving})")
        if refused:
            return (f"generation {self.generation} published, but {', '.join(refused)} refused it "
                    f"(the engine's log says why)", "WORKER_REFUSED")
        if not behind:
            return self.ok, None
        if time.monotonic() >= self.deadline:
            return (f"generation {self.generation} published, but {', '.join(behind)} did not take "
                    f"it up within {SWITCH_TIMEOUT_S:g} s", "RELOAD_INCOMPLETE")
        return None
