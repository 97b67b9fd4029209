"""The other process of the cross-process shm tests (and of bench.ring's helpers' style).

Two ways in:
- ``serve(conn)``: a long-lived multiprocessing (spawn) peer that runs commands sent over a
  Pipe, so hypothesis examples do not pay a process start each.
- ``python -m tests.shm.peers <command> ...``: a plain subprocess, for inherited fds
  (eventfd via pass_fds) and for owners killed with SIGKILL.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time

import numpy as np
from numba import njit

from shm.atomics import (compare_and_swap, fetch_add, fetch_add_py, load_acquire,
                         load_acquire_py, store_release)
from shm.doorbell import EventfdDoorbell, SemaphoreDoorbell
from shm.idle import SleepingBackoff, SpinThenSleep
from shm.ring import OneToOneRing
from shm.segment import Segment

MSG_DTYPE = np.dtype({"names": ["seq", "check"], "formats": ["<u8", "<u8"],
                      "offsets": [0, 8], "itemsize": 64})
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
DEADLINE_S = 60.0


def make_messages(start: int, n: int) -> np.ndarray:
    recs = np.zeros(n, MSG_DTYPE)
    recs["seq"] = np.arange(start, start + n, dtype=np.uint64)
    recs["check"] = recs["seq"] * _GOLDEN
    return recs


def check_messages(view: np.ndarray, start: int) -> str:
    """'' if ``view`` holds seq start, start+1, ... with intact payload, else what is wrong."""
    n = len(view)
    seq = view["seq"]
    want = np.arange(start, start + n, dtype=np.uint64)
    if not np.array_equal(seq, want):
        bad = int(np.flatnonzero(seq != want)[0])
        return f"order: at {start + bad} got seq {int(seq[bad])}"
    if not np.array_equal(view["check"], seq * _GOLDEN):
        return f"payload: torn record in seq {start}..{start + n - 1}"
    return ""


def _bell(name):
    return SemaphoreDoorbell.open(name) if name else None


def produce(ring_name, bell_name, total, batch_sizes, start=0):
    """Publish seq start..start+total-1 in batches cycling through ``batch_sizes``."""
    ring = OneToOneRing.attach(ring_name, MSG_DTYPE, doorbell=_bell(bell_name))
    backoff = SleepingBackoff(10, 500)
    seq, i, refused = start, 0, 0
    end = start + total
    deadline = time.monotonic() + DEADLINE_S
    try:
        while seq < end:
            b = min(batch_sizes[i % len(batch_sizes)], end - seq)
            recs = make_messages(seq, b)
            while not ring.try_publish(recs):
                refused += 1
                if time.monotonic() > deadline:
                    return ("timeout", seq, refused)
                backoff.idle()
            backoff.reset()
            seq += b
            i += 1
        return ("ok", seq, refused)
    finally:
        ring.close()


def consume(ring_name, bell_name, total, max_ns, start=0, sleep_timeout_ms=20.0, spin_us=2.0):
    """Drain ``total`` messages checking order and payload; returns (status, next, idle stats)."""
    ring = OneToOneRing.attach(ring_name, MSG_DTYPE, doorbell=_bell(bell_name))
    idle = SpinThenSleep(spin_us, sleep_timeout_ms)
    seq, i = start, 0
    end = start + total
    deadline = time.monotonic() + DEADLINE_S
    try:
        while seq < end:
            v1, v2 = ring.try_drain(max_ns[i % len(max_ns)])
            i += 1
            n = len(v1) + len(v2)
            if n == 0:
                if time.monotonic() > deadline:
                    return ("timeout", seq, {})
                idle.idle(ring)
                continue
            err = check_messages(v1, seq) or check_messages(v2, seq + len(v1))
            if err:
                return ("bad", err, {})
            ring.release(n)
            seq += n
        return ("ok", seq, {"doorbell_wakes": idle.doorbell_wakes, "timeout_wakes": idle.timeout_wakes})
    finally:
        ring.close()


def fill(ring_name, start):
    """Publish single messages until the first refusal; returns how many were accepted."""
    ring = OneToOneRing.attach(ring_name, MSG_DTYPE)
    try:
        n = 0
        while ring.try_publish(make_messages(start + n, 1)):
            n += 1
            if n > ring.capacity:
                break
        return ("ok", n, ring.try_publish(make_messages(start + n, 1)))
    finally:
        ring.close()


@njit(cache=False)
def _spin_until_set(a, ready_word, flag_word):
    # The exact shape that hangs forever with a plain ``a[flag_word]`` load (checked here:
    # LLVM hoists it); unbounded on purpose, the test bounds its wait for the answer.
    store_release(a, ready_word, 1)
    while load_acquire(a, flag_word) == 0:
        pass
    return load_acquire(a, flag_word)


@njit(cache=False)
def _add_many(a, counter_word, n, use_cas):
    for _ in range(n):
        if use_cas:
            while True:
                old = load_acquire(a, counter_word)
                if compare_and_swap(a, counter_word, old, old + 1) == old:
                    break
        else:
            fetch_add(a, counter_word, 1)


def spin(seg_name, ready_word, flag_word):
    seg = Segment.attach(seg_name)
    a = seg.array(np.int64, 0, 64)
    v = _spin_until_set(a, ready_word, flag_word)
    del a
    seg.close()
    return ("ok", int(v))


def add_many(seg_name, ready_word, go_word, counter_word, n, use_cas):
    seg = Segment.attach(seg_name)
    a = seg.array(np.int64, 0, 64)
    _add_many(a, counter_word, 1, use_cas)          # compile before reporting ready
    fetch_add_py(a, counter_word, -1)
    fetch_add_py(a, ready_word, 1)
    while load_acquire_py(a, go_word) == 0:         # sleep-poll: never spin on 2 cores
        time.sleep(0.0002)
    _add_many(a, counter_word, n, use_cas)
    del a
    seg.close()
    return ("ok",)


COMMANDS = {"produce": produce, "consume": consume, "fill": fill, "spin": spin, "add_many": add_many}


def serve(conn) -> None:
    """Run (command, args) tuples from ``conn`` until None; reply with the result or the error."""
    while True:
        msg = conn.recv()
        if msg is None:
            return
        cmd, args = msg
        try:
            conn.send(COMMANDS[cmd](*args))
        except Exception as e:           # reported to the test, which fails with it
            conn.send(("error", f"{type(e).__name__}: {e}"))


class Peer:
    """A spawned process running tests.shm.peers.serve; ``call`` runs one command there."""

    def __init__(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
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


def _main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "own":            # own <instance> <ring-name> <bell-name>: create, print, sleep
        ring = OneToOneRing.create(argv[2], 8, MSG_DTYPE, instance=argv[1])
        bell = SemaphoreDoorbell.create(argv[1], argv[3])
        print(ring.name, bell.name, flush=True)
        time.sleep(120)
        return 0
    if cmd == "eventfd_produce":   # eventfd_produce <fd> <ring>...: one message per ring on stdin line
        efd = EventfdDoorbell(int(argv[1]))
        rings = [OneToOneRing.attach(n, MSG_DTYPE, doorbell=efd) for n in argv[2:]]
        for line in sys.stdin:
            k, seq = (int(x) for x in line.split())
            ok = rings[k].try_publish(make_messages(seq, 1))
            print("ok" if ok else "full", flush=True)
        return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
