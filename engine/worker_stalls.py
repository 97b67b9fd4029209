"""A worker's slow steps, counted and logged in its control block (engine.worker)."""
from __future__ import annotations

from shm.control import STALL_NS, Block, EventLog


class StallRecorder:
    """Counts and logs (shm.control.EventLog) the steps of a worker slower than
    STALL_NS, by phase: pickup (the oldest event's wait before this worker drained it:
    the worker was busy, held, descheduled or asleep), kernel, journal (append), publish,
    hold (snapshot).
    Each log entry: wall time, phase, duration ns, events, and how the worker last woke
    (0 busy or spinning, 1 doorbell, 2 safety timeout: a lost wake-up would show as 2)."""

    def __init__(self, block: Block, index: int, idle):
        self.counts = block.worker(index, "stalls")
        self.log = EventLog(block.worker(index, "stall_log"))
        self.idle = idle                    # the worker's SpinThenSleep (its last_wake)

    def note(self, durations, n: int) -> None:
        """Per-batch durations of the first four phases, in STALL_PHASES order."""
        for phase, d in enumerate(durations):
            if d > STALL_NS:
                self.add(phase, d, n)

    def add(self, phase: int, d: int, n: int) -> None:
        self.counts[phase] += 1
        self.log.add(phase, d, n, self.idle.last_wake)
