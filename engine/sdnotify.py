"""systemd's notify protocol (sd_notify(3)) over a plain AF_UNIX datagram socket: READY=1
once the engine serves, STOPPING=1 when it begins to stop, STATUS= lines while it starts,
WATCHDOG=1 every half WATCHDOG_USEC when the unit sets WatchdogSec=. No dependency: the
protocol is one datagram of KEY=VALUE lines to the path (or, with a leading '@', the abstract
name) in $NOTIFY_SOCKET. Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID once, at construction."""

    def __init__(self, environ=os.environ):
        addr = environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):                # abstract namespace
            addr = "\0" + addr[1:]
        self.addr = addr if addr.startswith(("/", "\0")) else ""
        self.sock: socket.socket | None = None
        self.errors = 0                         # datagrams that could not be sent
        self.watchdog_every_s = 0.0             # 0: no watchdog
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if self.addr and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_every_s = int(usec) / 2e6
        self._watchdog_due = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.addr)

    def send(self, *lines: str) -> bool:
        """One datagram of ``lines``; False when there is no socket or the send failed (the
        engine keeps running: systemd then acts on its own timeouts)."""
        if not self.addr:
            return False
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.sendto("\n".join(lines).encode(), self.addr)
            return True
        except OSError:
            self.errors += 1
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        self._watchdog_due = 0.0

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        """Call from the supervisor's loop: a ping every half WATCHDOG_USEC, so a loop that
        hangs is restarted by systemd (WatchdogSec=)."""
        if not self.watchdog_every_s:
            return
        now = time.monotonic()
        if now >= self._watchdog_due:
            self._watchdog_due = now + self.watchdog_every_s
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
