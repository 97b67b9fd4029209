"""engine.sdnotify against a real AF_UNIX datagram socket, as systemd listens: the message
format, the abstract namespace ('@'), and the watchdog only for this process."""
from __future__ import annotations

import os
import socket
import uuid

from engine.sdnotify import Notifier


def listener(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(5)
    return s


def test_ready_status_stopping_and_watchdog_datagrams(tmp_path):
    path = str(tmp_path / "notify")
    with listener(path) as s:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        assert n.enabled and n.watchdog_every_s == 1.0
        n.ready("serving tcp://x")
        assert s.recv(4096).decode().split("\n") == ["READY=1", "STATUS=serving tcp://x",
                                                     f"MAINPID={os.getpid()}"]
        n.watchdog()
        n.watchdog()                      # within the second: no second ping
        n.stopping()
        assert s.recv(4096) == b"WATCHDOG=1"
        assert s.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        n.close()


def test_abstract_socket_and_a_watchdog_meant_for_another_process():
    name = "risk-engine-test-" + uuid.uuid4().hex
    with listener("\0" + name) as s:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": str(os.getpid() + 1)})
        assert n.watchdog_every_s == 0        # WATCHDOG_PID names someone else
        n.status("starting")
        assert s.recv(4096) == b"STATUS=starting"
        n.close()


def test_without_systemd_nothing_is_sent():
    n = Notifier({})
    assert not n.enabled and not n.send("READY=1")
    n.ready("x"), n.watchdog(), n.stopping()
    gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not gone.send("READY=1") and gone.errors == 1      # never raises
