"""Hostile peers against a real engine's front door: a message of a million empty frames, a
peer flooding junk, more idle connections than the ingress has descriptors. In each case a
normal client must keep getting answers, and the ingress's cost must stay bounded."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import psutil
import pytest
import zmq

from engine.config import load_config
from engine.types import ErrorCode
from ingress import wire
from ingress.client import Client
from tests.engine.engine_proc import EngineProcess
from tests.engine.test_e2e import random_events
from tests.engine.test_metrics import scrape, value
from tests.engine.zmtp_raw import RawPeer, frame

MiB = 1 << 20


@pytest.fixture(scope="module")
def schema():
    return load_config().schema


def ingress_process(eng: EngineProcess) -> psutil.Process:
    procs = [p for p in psutil.Process(eng.proc.pid).children() if "ingress" in " ".join(p.cmdline())]
    assert len(procs) == 1, procs
    return procs[0]


def test_messages_of_a_million_empty_frames_cost_bounded_memory_and_time(tmp_path, schema):
    """Issue 19 defect 7: 2 MB of '01 00' (a million empty frames in one message; ZMQ_MAXMSGSIZE
    bounds a frame, not their number). Each such message held the old ingress about 1.8 s
    and its RSS grew by the frames libzmq queued meanwhile (30 of them: 293 MiB to 1.8 GB).
    Now the ingress keeps 4 frames, drops the rest in one compiled loop, answers BAD_FRAME
    once and closes that connection, so the peer cannot queue more. Sent here from a raw
    ZMTP peer at the speed of sendall: 20 such messages (old code: RSS +1.2 GiB or more).
    Allowed outcomes: the peer's sends stop with a broken connection, or all go through; a
    normal client's every request is decided meanwhile (deadline 10 s: no timing luck)."""
    k, m = 20, 1_000_000
    rng = np.random.default_rng(19)
    with EngineProcess(tmp_path, workers=1, overrides={"ingress": {"default_deadline_ms": 10_000}}) as eng:
        ing = ingress_process(eng)
        with Client(eng.endpoint, schema, timeout_ms=60_000, retries=0) as c:
            c.evaluate_batch(random_events(rng, schema, 1))
            rss0 = ing.memory_info().rss
            peer = RawPeer(eng.port, timeout_s=10)
            msg = frame(b"", True) + frame(b"", True) * m + frame(b"x", False)

            sent = [0]

            def send():
                try:
                    for _ in range(k):
                        peer.send_raw(msg)
                        sent[0] += 1
                except OSError:                   # closed by the ingress (a reset, or a
                    pass                          # zero window until the timeout)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            peak, decided = rss0, 0
            t_end = time.monotonic() + 120                          # bounded
            while (sender.is_alive() or decided < 5) and time.monotonic() < t_end:
                peak = max(peak, ing.memory_info().rss)
                d = c.evaluate_batch(random_events(rng, schema, 1))[0]
                assert d.error is None, d                   # decided, not a default
                decided += 1
            for _ in range(20):                   # what libzmq still queues shows here
                peak = max(peak, ing.memory_info().rss)
                time.sleep(0.05)
            sender.join(60)
            reply = wire.unpack_reply(peer.recv_message()[-1])      # sent before the close
            peer.close()
            assert reply[1] == ErrorCode.BAD_FRAME and "1000003 frames" in reply[3], reply
            d = c.evaluate_batch(random_events(rng, schema, 1))[0]
            assert d.error is None
            closed = value(scrape(eng.metrics_url), "risk_connections_closed_total", reason="bad_frames")
            assert closed == 1, closed                       # that peer's connection, once
    growth = (peak - rss0) / MiB
    print(f"ingress RSS {rss0 / MiB:.0f} MiB, peak +{growth:.0f} MiB; {decided} requests decided meanwhile; "
          f"{sent[0]} of {k} messages sent")
    assert growth < 400, f"ingress RSS grew by {growth:.0f} MiB"
