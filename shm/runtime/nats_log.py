"""What a long-lived NATS connection says about itself: one line per state change, not a
traceback per reconnect attempt (docs/CLUSTER.md, "Failures").

nats-py, given no ``error_cb``, logs every failed reconnect attempt with its full traceback
(``nats: encountered error``): a node cut off from NATS printed one every 0.25 s
(reconnect_time_wait) per connection. ``ConnectionLog(name, say).callbacks()`` are the
``error_cb``, ``disconnected_cb`` and ``reconnected_cb`` to pass to ``nats.connect``:

- disconnected: one line (``NAME: disconnected from NATS; reconnecting``);
- each failed attempt while disconnected: counted, no line; once every ``every_s`` a line
  saying it is still disconnected (attempts so far, the last error in one line);
- reconnected: one line, with how long it was down and how many attempts failed;
- an error while connected (a slow consumer, a permissions violation): one line, at most
  one per ``every_s``, the next naming how many were not printed.

The read error that ends a connection (``UnexpectedEOF``, a reset) is said in the
disconnected line, not on its own. A connection that flaps prints a disconnected line at most
once per ``every_s`` (and the reconnected line of each outage it printed); the disconnections
in between are counted in the next one. nats-py calls the disconnected callback on
``close()`` too: an owner calls ``closing()`` first, so a close of its own says nothing. No
nats import: the callbacks are plain coroutines."""
from __future__ import annotations

import sys
import time

EVERY_S = 30.0              # a repeated line (still down, errors, flaps) at most this often


def _err(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _lost(e: BaseException) -> bool:
    """A read error that ends the connection (nats-py reports it, then reconnects); by name,
    so this module needs no nats import."""
    return isinstance(e, OSError) or any(c.__name__ in ("StaleConnectionError", "ConnectionClosedError")
                                         for c in type(e).__mro__)


class ConnectionLog:
    def __init__(self, name: str, say=None, every_s: float = EVERY_S, clock=time.monotonic):
        if not every_s > 0:
            raise ValueError(f"every_s={every_s}: must be > 0")
        self.name, self.every_s, self.clock = name, float(every_s), clock
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.down_since: float | None = None     # disconnected since (clock); None: connected
        self.failed = 0                          # attempts failed since the disconnection
        self.errors = 0                          # every error reported, for metrics and tests
        self._last: BaseException | None = None
        self._said = {"down": -float("inf"), "up": -float("inf"), "still": -float("inf"),
                      "error": -float("inf")}
        self._flaps = 0                          # disconnections not printed
        self._printing = False                   # this outage's disconnection was printed
        self._cause: BaseException | None = None  # what ended the connection (said with it)
        self._quiet_errors = 0                   # errors while connected not printed
        self._closing = False                    # the owner closes it: no outage to tell

    def callbacks(self) -> dict:
        return {"error_cb": self.error, "disconnected_cb": self.disconnected,
                "reconnected_cb": self.reconnected}

    def _due(self, kind: str) -> bool:
        t = self.clock()
        if t - self._said[kind] < self.every_s:
            return False
        self._said[kind] = t
        return True

    def closing(self) -> None:
        """The owner is closing the connection: the disconnection nats-py reports next is not
        an outage (no line)."""
        self._closing = True

    async def disconnected(self) -> None:
        if self.down_since is not None or self._closing:
            return
        self.down_since, self.failed, self._last = self.clock(), 0, None
        self._said["still"] = self.down_since
        cause, self._cause = self._cause, None
        self._printing = self._due("down")
        if not self._printing:
            self._flaps += 1
            return
        flaps = f" ({self._flaps} more disconnection(s) since the last such line)" if self._flaps else ""
        self._flaps = 0
        self.say(f"{self.name}: disconnected from NATS{f' ({_err(cause)})' if cause else ''}; "
                 f"reconnecting{flaps}")

    async def reconnected(self) -> None:
        if self.down_since is None:
            return
        down_s, failed, self.down_since = self.clock() - self.down_since, self.failed, None
        if self._printing:              # the outage was told: so is its end
            self.say(f"{self.name}: reconnected to NATS after {down_s:.1f} s ({failed} attempt(s) failed)")

    async def error(self, e: BaseException) -> None:
        self.errors += 1
        if self.down_since is not None:
            self.failed, self._last = self.failed + 1, e
            if self._due("still"):
                self._printing = True
                self.say(f"{self.name}: still disconnected from NATS after "
                         f"{self.clock() - self.down_since:.0f} s: {self.failed} attempt(s) failed, "
                         f"the last: {_err(e)}")
            return
        if _lost(e):                    # the connection's end, reported just before the
            self._cause = e             # disconnection: said in its line
            return
        if not self._due("error"):
            self._quiet_errors += 1
            return
        more = f" ({self._quiet_errors} more not printed since the last)" if self._quiet_errors else ""
        self._quiet_errors = 0
        self.say(f"{self.name}: NATS error: {_err(e)}{more}")
