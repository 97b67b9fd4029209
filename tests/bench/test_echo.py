"""bench.echo's compiled loop (--compiled) against a real client: whole messages echoed frame
for frame (empty and large frames too), the start/stop protocol of the pyzmq loop, --help."""
from __future__ import annotations

import subprocess
import sys

import zmq

from bench.echo import EchoServer
from bench.engine_proc import free_port


def test_compiled_echo_answers_every_message_and_counts_them():
    srv = EchoServer(f"tcp://127.0.0.1:{free_port()}", compiled=True)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    try:
        d.connect(srv.bind)
        msgs = [[b"", b"one"], [b"", b"", b"two", b""], [b"", b"x" * (1 << 20)]]
        msgs += [[b"", b"%d" % i] for i in range(200)]
        for m in msgs:
            d.send_multipart(m)
        for m in msgs:                           # one DEALER: replies come back in order
            assert d.poll(10_000), "no reply within 10 s"
            assert d.recv_multipart() == m
    finally:
        d.close(0)
        ctx.term()
        handled = srv.stop(timeout_s=30)
    assert srv.proc.returncode == 0
    assert handled == len(msgs)


def test_help_names_the_compiled_flag():
    out = subprocess.run([sys.executable, "-m", "bench.echo", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--compiled" in out.stdout
