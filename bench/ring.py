"""Ring benchmarks across two processes: ``python -m bench.ring``.

PingPongLatency: this process publishes one 64-byte message on a ping ring, a spawned echo
process drains it and publishes it back on a pong ring; round trip measured here with
perf_counter_ns. Both sides idle with SpinThenSleep on a posix_ipc semaphore doorbell, for
a few spin budgets (0 us: always sleep; the engine's worker uses 5 us).

OneToOneThroughput: the spawned process publishes M messages in batches of B (sleeping
backoff when full); this process drains (max_n = capacity, SpinThenSleep(5 us) on a semaphore
doorbell) and checks order; messages per second from first drain to last.

Figures drift up to 2x between runs on this 2-vCPU VM: compare within one
run. Nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import numpy as np

from shm.doorbell import SemaphoreDoorbell
from shm.idle import SleepingBackoff, SpinThenSleep
from shm.ring import OneToOneRing
from shm.segment import unlink_owned

MSG_DTYPE = np.dtype({"names": ["seq", "t_ns"], "formats": ["<u8", "<i8"], "offsets": [0, 8],
                      "itemsize": 64})
INSTANCE = "ringbench"


def _echo(ping_name, ping_bell, pong_name, pong_bell, spin_us, count) -> None:
    ping = OneToOneRing.attach(ping_name, MSG_DTYPE, doorbell=SemaphoreDoorbell.open(ping_bell))
    pong = OneToOneRing.attach(pong_name, MSG_DTYPE, doorbell=SemaphoreDoorbell.open(pong_bell))
    idle = SpinThenSleep(spin_us, 100.0)
    done = 0
    while done < count:
        v1, v2 = ping.try_drain(64)
        if len(v1) == 0:
            idle.idle(ping)
            continue
        while not pong.try_publish(v1):
            time.sleep(0.0001)
        ping.release(len(v1))
        done += len(v1)
    ping.close()
    pong.close()


def _produce(name, bell_name, total, batch) -> None:
    ring = OneToOneRing.attach(name, MSG_DTYPE, doorbell=SemaphoreDoorbell.open(bell_name))
    recs = np.zeros(batch, MSG_DTYPE)
    backoff = SleepingBackoff(10, 200)
    seq = 0
    while seq < total:
        b = min(batch, total - seq)
        recs["seq"][:b] = np.arange(seq, seq + b, dtype=np.uint64)
        while not ring.try_publish(recs[:b]):
            backoff.idle()
        backoff.reset()
        seq += b
    ring.close()


def ping_pong(round_trips: int, spin_us: float, capacity: int) -> np.ndarray:
    """Round-trip times in ns of ``round_trips`` one-message ping-pongs."""
    made = []
    try:
        bells = [SemaphoreDoorbell.create(INSTANCE, f"bell{k}") for k in range(2)]
        made += bells
        ping = OneToOneRing.create("ping", capacity, MSG_DTYPE, instance=INSTANCE, doorbell=bells[0])
        pong = OneToOneRing.create("pong", capacity, MSG_DTYPE, instance=INSTANCE, doorbell=bells[1])
        made += [ping, pong]
        warmup = 2000
        ctx = mp.get_context("spawn")
        child = ctx.Process(target=_echo, args=(ping.name, bells[0].name, pong.name, bells[1].name,
                                                spin_us, round_trips + warmup))
        child.start()
        idle = SpinThenSleep(spin_us, 100.0)
        rec = np.zeros(1, MSG_DTYPE)
        rtt = np.empty(round_trips + warmup, np.int64)
        for i in range(round_trips + warmup):
            rec["seq"] = i
            t0 = time.perf_counter_ns()
            ping.try_publish(rec)
            while True:
                v1, _ = pong.try_drain(1)
                if len(v1):
                    break
                idle.idle(pong)
            rtt[i] = time.perf_counter_ns() - t0
            pong.release(1)
        child.join(30)
        return rtt[warmup:]
    finally:
        _cleanup(made)


def throughput(total: int, batch: int, capacity: int) -> float:
    """Messages per second through one ring, producer in another process."""
    made = []
    try:
        bell = SemaphoreDoorbell.create(INSTANCE, "tputbell")
        made.append(bell)
        ring = OneToOneRing.create("tput", capacity, MSG_DTYPE, instance=INSTANCE, doorbell=bell)
        made.append(ring)
        ctx = mp.get_context("spawn")
        child = ctx.Process(target=_produce, args=(ring.name, bell.name, total, batch))
        child.start()
        idle = SpinThenSleep(5.0, 100.0)
        seq, t0 = 0, 0
        while seq < total:
            v1, v2 = ring.try_drain(capacity)
            n = len(v1) + len(v2)
            if n == 0:
                idle.idle(ring)
                continue
            if t0 == 0:
                t0 = time.perf_counter_ns()
            if v1["seq"][0] != seq:
                raise RuntimeError(f"order broken at seq={seq}")
            ring.release(n)
            seq += n
        dt_s = (time.perf_counter_ns() - t0) / 1e9
        child.join(30)
        return total / dt_s
    finally:
        _cleanup(made)


def call_costs(capacity: int, n: int = 100_000) -> dict:
    """Per-call cost in us of the ring API in one process (no scheduling noise)."""
    made = []
    try:
        ring = OneToOneRing.create("calls", capacity, MSG_DTYPE, instance=INSTANCE)
        made.append(ring)
        peer = OneToOneRing.attach(ring.name, MSG_DTYPE)
        one = np.zeros(1, MSG_DTYPE)
        out = {}
        for batch in (1, 64):
            recs = np.zeros(batch, MSG_DTYPE)
            t0 = time.perf_counter_ns()
            for _ in range(n):
                ring.try_publish(recs)
                v1, v2 = peer.try_drain(batch)
                peer.release(len(v1) + len(v2))
            out[f"publish+drain+release batch={batch}"] = (time.perf_counter_ns() - t0) / n / 1000
        t0 = time.perf_counter_ns()
        for _ in range(n):
            peer.try_drain(1)
        out["try_drain on empty"] = (time.perf_counter_ns() - t0) / n / 1000
        t0 = time.perf_counter_ns()
        for _ in range(n):
            peer.available()
        out["available"] = (time.perf_counter_ns() - t0) / n / 1000
        del one, v1, v2
        peer.close()
        return out
    finally:
        _cleanup(made)


def _cleanup(made) -> None:
    for obj in made:
        obj.unlink()
        obj.close()
    unlink_owned(INSTANCE, os.getpid())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ring", description=__doc__.split("\n")[0])
    ap.add_argument("--round-trips", type=int, default=20_000)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--capacity", type=int, default=4096)
    ap.add_argument("--spins-us", type=float, nargs="+", default=[0.0, 5.0, 50.0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    args = ap.parse_args(argv)
    print("OneProcessCallCost (the ring API's own cost, no other process involved)")
    for k, v in call_costs(args.capacity).items():
        print(f"  {k:38s} {v:6.2f} us")
    print(f"PingPongLatency (2 processes, 64 B slots, semaphore doorbell, {args.round_trips} round trips)")
    print(f"  {'spin_us':>8} {'p50_us':>8} {'p99_us':>8} {'p99.9_us':>9} {'max_us':>9}")
    for spin in args.spins_us:
        rtt_us = ping_pong(args.round_trips, spin, args.capacity) / 1000.0
        p50, p99, p999 = np.percentile(rtt_us, [50, 99, 99.9])
        print(f"  {spin:8.1f} {p50:8.2f} {p99:8.2f} {p999:9.2f} {rtt_us.max():9.1f}")
    print(f"OneToOneThroughput (producer in another process, capacity {args.capacity}, 64 B slots)")
    print(f"  {'batch':>8} {'messages':>10} {'Mmsg/s':>8}")
    for b in args.batches:
        total = args.messages if b > 1 else min(args.messages, 200_000)
        rate = throughput(total, b, args.capacity)
        print(f"  {b:8d} {total:10d} {rate / 1e6:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
