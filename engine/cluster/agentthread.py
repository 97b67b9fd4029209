"""A lease agent (engine.cluster.agent) on a daemon thread with its own event loop, for a
synchronous process (a `serve` node, tests): nats-py is asyncio, the engine is not."""
from __future__ import annotations

import asyncio
import threading


async def _all(*coros) -> None:
    """Run them together; the first to fail stops the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class AgentThread:
    """A LeaseAgent on a daemon thread with its own event loop, for a synchronous process."""

    def __init__(self, agent, side=()):             # agent: engine.cluster.agent.LeaseAgent
        self.agent = agent
        self.side = list(side)       # coroutine functions (stop) run beside the agent on its loop
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"lease-agent {agent.node}", daemon=True)

    def start(self) -> "AgentThread":
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:       # kept for the owner to report; the leases lapse
            self.error = e
            self._ready.set()

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await _all(self.agent.run(self._stop), *(f(self._stop) for f in self.side))

    def call_soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the agent's loop (from another thread)."""
        self._loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop and release the leases; True if the thread ended within ``timeout_s``."""
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:         # the loop has already closed
                pass
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
