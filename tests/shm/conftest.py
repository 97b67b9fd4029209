"""Fixtures: a fresh shm instance name per test (cleaned up), and a long-lived peer process."""
from __future__ import annotations

import multiprocessing as mp
import os
import uuid

import pytest

from shm.segment import list_names, reclaim_stale, unlink_owned


@pytest.fixture
def instance():
    """A unique engine instance name; every segment/semaphore of it is removed afterwards."""
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    unlink_owned(name, os.getpid())
    reclaim_stale(name)
    assert list_names(name) == []


class Peer:
    """A spawned process running tests.shm.peers.serve; ``call`` runs one command there."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        from tests.shm.peers import serve
        self.proc = ctx.Process(target=serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def start(self, cmd: str, *args) -> None:
        self.conn.send((cmd, args))

    def result(self, timeout_s: float = 90.0):
        if not self.conn.poll(timeout_s):
            raise TimeoutError(f"peer gave no answer within {timeout_s} s")
        return self.conn.recv()

    def call(self, cmd: str, *args, timeout_s: float = 90.0):
        self.start(cmd, *args)
        return self.result(timeout_s)

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.stop()
