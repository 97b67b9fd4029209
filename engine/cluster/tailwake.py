"""How a worker under ``cluster.ack: sync`` wakes the journal tailer: an eventfd the node
creates (``ClusterNode.join``) and every worker inherits (``plan["replication_eventfd"]``); a
worker rings it after each batch it journals and holds replies for (engine.ackgate), right
after raising its ``journaled_seq`` mark (shm.replication). The tailer's loop
(engine.cluster.replicate) waits on it between steps instead of polling the marks every
millisecond: a held reply's record is read as soon as it is committed.

The ring only says "look again": the loop always re-reads the marks, and waits with a
timeout (its full step's cadence), so a lost or early ring costs at most that wait.
"""
from __future__ import annotations

import asyncio

from shm.doorbell import EventfdDoorbell


class TailerWake:
    """The loop's side of the eventfd: ``wait(timeout_s)`` returns True once rung (also when
    the ring came before the call, since the last wait), False after ``timeout_s``."""

    def __init__(self, bell: EventfdDoorbell):
        self.bell = bell
        self._rung = False
        self._waiter: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> None:
        """Watch the eventfd on the running loop (call once, on it)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.bell.fileno(), self._readable)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.bell.fileno())
            self._loop = None

    def _readable(self) -> None:
        self.bell.drain()
        self._rung = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def wait(self, timeout_s: float) -> bool:
        if not self._rung:
            fut = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(max(timeout_s, 0.0), lambda: fut.done() or fut.set_result(False))
            try:
                await fut
            finally:
                timer.cancel()
                self._waiter = None
        rung, self._rung = self._rung, False
        return rung
