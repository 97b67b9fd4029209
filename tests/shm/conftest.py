"""Fixtures: a fresh shm instance name per test (cleaned up), and a long-lived peer process."""
from __future__ import annotations

import os
import uuid

import pytest

from shm.segment import list_names, reclaim_stale, unlink_owned
from tests.shm.peers import Peer


@pytest.fixture
def instance():
    """A unique engine instance name; every segment/semaphore of it is removed afterwards."""
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    unlink_owned(name, os.getpid())
    reclaim_stale(name)
    assert list_names(name) == []


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.stop()
