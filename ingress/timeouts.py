"""What a request that passed its deadline is answered with, for both ingress paths.

The configured default action (``ingress.on_timeout``), flagged WORKER_LOST when its worker
is gone, else TIMEOUT, which is also logged per burst in the control block's timeout log.
"""
from __future__ import annotations

import time

from shm.control import EventLog
from shm.types import Action, DecisionFlag, ErrorCode

TIMEOUT_BURST_NS = 100_000_000        # timeouts closer than this share one log entry


class Timeouts:
    def __init__(self, ingress_cfg, block, rings: list):
        self.action = int(Action.ALLOW if ingress_cfg.on_timeout == "allow" else Action.BLOCK)
        self.rings = rings
        self.alive = block.view("supervisor.worker_alive")
        self.c_timeouts = block.view("ingress.timeouts")
        self.c_lost = block.view("ingress.worker_lost")
        self.log = EventLog(block.view("ingress.timeout_log"))

    def blame(self, workers: list) -> int:
        """The worker a request held by ``workers`` timed out on: the first lost one, if any."""
        lost = [w for w in workers if not self.alive[w]]
        return lost[0] if lost else workers[0]

    def expiry(self, w: int, age: int) -> tuple[DecisionFlag, ErrorCode]:
        """A request on worker ``w`` (age ``age`` ns) passed its deadline: WORKER_LOST if the
        worker is gone, else TIMEOUT (logged); counted. Returns (decision flag, code)."""
        if not self.alive[w]:
            self.c_lost[0] += 1
            return DecisionFlag.DEFAULT_WORKER_LOST, ErrorCode.WORKER_LOST
        self.c_timeouts[0] += 1
        self._log_timeout(w, age)
        return DecisionFlag.DEFAULT_TIMEOUT, ErrorCode.TIMEOUT

    def _log_timeout(self, w: int, age: int) -> None:
        """One log entry per burst: [wall time of the first, worker, timeouts, oldest age ns,
        highest request-ring occupancy, wall time of the last]. A timeout within
        TIMEOUT_BURST_NS of the previous one for the same worker joins its entry."""
        occ = self.rings[w].request.occupancy()
        wall = time.time_ns()
        row = self.log.newest()
        if row is not None and row[1] == w and wall - row[5] < TIMEOUT_BURST_NS:
            row[2] += 1
            row[3] = max(int(row[3]), age)
            row[4] = max(int(row[4]), occ)
            row[5] = wall
        else:
            self.log.add(w, 1, age, occ, wall)
