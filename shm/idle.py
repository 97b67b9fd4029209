"""Idle strategies: what a loop does when its ring has nothing for it (Disruptor style).

Small objects built once and called from the loop's idle branch; they count how they woke,
for the metrics. A long spin (hundreds of microseconds, to skip the wake-up of an idle CPU)
is only for a spinner that yields every round and spins only while spinning pays
(SpinPayoff): on this 2-core machine a plain spinner steals the CPU the other side needs.
"""
from __future__ import annotations

import os
import time

import numpy as np

from shm._spin_kernels import spin as _spin


ADAPTIVE_FLOOR_NS = 5_000   # an adaptive spinner whose spin does not pay still spins this long


class SpinThenSleep:
    """Consumer: poll for ``spin_us``, then sleep on the ring's doorbell.

    Use for a consumer that has only this ring to wait on (a worker on its request ring).
    Spinning a few microseconds catches a back-to-back burst without a system call; then the
    consumer raises the ring's sleeping flag, fences, re-checks, and sleeps on the doorbell
    for at most ``sleep_timeout_ms`` (the safety net against a lost wake-up: it can only
    delay, never lose, a message). ``spin_us=0`` sleeps at once. ``adaptive``: spin the
    full ``spin_us`` only while it pays (SpinPayoff: most idle gaps end within it), else
    ADAPTIVE_FLOOR_NS; the engine's workers use 1000 us this way (docs/DEPLOY.md: with one
    client it took the p50 from 1.51x to 1.06x the echo's, and changed nothing measurable
    under load). A ring without a doorbell is polled every ``sleep_timeout_ms``.
    ``clock``: nanoseconds, monotonic (a test drives the spin deadline and the payoff's gaps
    with a clock of its own). With the default clock and a OneToOneRing the spin is one
    compiled ``nogil`` call (shm._spin_kernels.spin), no Python per round.
    """

    def __init__(self, spin_us: float = 5.0, sleep_timeout_ms: float = 100.0,
                 yield_cpu: bool = False, adaptive: bool = False, clock=time.perf_counter_ns):
        if spin_us < 0 or sleep_timeout_ms <= 0:
            raise ValueError(f"spin_us={spin_us} sleep_timeout_ms={sleep_timeout_ms}: "
                             "need spin_us >= 0 and sleep_timeout_ms > 0")
        self.spin_ns = int(spin_us * 1000)
        self.sleep_timeout_ms = float(sleep_timeout_ms)
        self.yield_cpu = yield_cpu
        self.clock = clock
        self.payoff = SpinPayoff(self.spin_ns) if adaptive else None
        self._idle_since = 0
        self.spin_hits = 0         # data seen while spinning
        self.doorbell_wakes = 0    # woken by the producer's doorbell
        self.timeout_wakes = 0     # woken by the safety timeout
        self.recheck_hits = 0      # data seen by the re-check after raising the flag
        self.last_wake = 0         # how the last idle() ended: 0 data seen, 1 doorbell, 2 timeout
        self._ts = np.zeros(2, np.int64)   # the compiled spin's timespec

    def idle(self, ring) -> int:
        """Call when ``try_drain`` found nothing. Returns ``ring.available()`` (0 after an
        empty timeout: just call ``try_drain`` / ``idle`` again).

        ``yield_cpu``: every spin iteration calls sched_yield, so a spinner sharing its CPU
        with a runnable process hands the CPU over at once; on an otherwise idle CPU it keeps
        polling. That makes a long spin (hundreds of microseconds, to skip the wake-up of a
        sleeping CPU between two requests) affordable where cores are shared."""
        clock = self.clock
        now = clock()
        spin = self.spin_ns
        if self.payoff is not None:
            self._idle_since = self._idle_since or now
            if not self.payoff.spin:
                spin = min(spin, ADAPTIVE_FLOOR_NS)
        deadline = now + spin
        yield_cpu = self.yield_cpu
        if clock is time.perf_counter_ns and isinstance(getattr(ring, "header", None), np.ndarray):
            n = _spin(ring.header, deadline, yield_cpu, self._ts)   # the same loop, compiled
            if n:
                self.spin_hits += 1
                self.last_wake = 0
                return self._got(n)
        while True:
            n = ring.available()
            if n:
                self.spin_hits += 1
                self.last_wake = 0
                return self._got(n)
            if clock() >= deadline:
                break
            if yield_cpu:
                os.sched_yield()
        if not ring.prepare_sleep():
            self.recheck_hits += 1
            self.last_wake = 0
            return self._got(ring.available())
        try:
            if ring.doorbell is not None:
                rung = ring.doorbell.wait(self.sleep_timeout_ms)
            else:
                time.sleep(self.sleep_timeout_ms / 1000.0)
                rung = False
        finally:
            ring.end_sleep()
        if rung:
            self.doorbell_wakes += 1
            self.last_wake = 1
        else:
            self.timeout_wakes += 1
            self.last_wake = 2
        return self._got(ring.available())

    def _got(self, n: int) -> int:
        """Data after an idle period: tell the payoff policy how long it waited."""
        if n and self.payoff is not None and self._idle_since:
            self.payoff.gap(self.clock() - self._idle_since)
            self._idle_since = 0
        return n


class SleepingBackoff:
    """Producer: wait for room in a full ring by sleeping, doubling from ``min_sleep_us`` to
    ``max_sleep_us``. Use where no doorbell exists for that direction (a worker whose
    response ring is full waits for the ingress to drain it). ``reset()`` after progress."""

    def __init__(self, min_sleep_us: float = 20.0, max_sleep_us: float = 1000.0):
        if not 0 < min_sleep_us <= max_sleep_us:
            raise ValueError(f"min_sleep_us={min_sleep_us} max_sleep_us={max_sleep_us}: "
                             "need 0 < min <= max")
        self.min_s = min_sleep_us / 1e6
        self.max_s = max_sleep_us / 1e6
        self._next_s = self.min_s
        self.sleeps = 0

    def idle(self) -> None:
        time.sleep(self._next_s)
        self.sleeps += 1
        self._next_s = min(self._next_s * 2, self.max_s)

    def reset(self) -> None:
        self._next_s = self.min_s


WAKE_NS = 100_000       # an idle CPU's wake-up on this VM kind: 20-100 us per hop (DEPLOY.md)


class SpinPayoff:
    """Whether a loop should spin for ``spin_ns`` before sleeping: only while spinning pays.

    Use for a loop that spins on an otherwise idle CPU to skip a wake-up (the ingress, a
    worker through SpinThenSleep(adaptive=True)) on a machine whose CPUs it may share.
    ``gap(ns)`` is told, every time work arrives after the loop ran out of it, how long it
    waited (spinning, sleeping, or both). A spin of
    ``spin_ns`` would have caught that work iff gap <= spin_ns; ``payoff`` is the moving
    average of that (1/32 per sample). Spinning pays when the wake-ups it saves outweigh the
    CPU it burns in vain: payoff x WAKE_NS > (1 - payoff) x spin_ns, i.e. payoff >=
    spin_ns / (spin_ns + WAKE_NS) (0.91 for 1 ms). With one client nearly every gap is
    shorter than 1 ms (payoff 0.99) and the loop spins; with 100 clients on 2 shared cores a
    third of the gaps were longer (the clients it waited for had no CPU), and the spinning
    cost 30 % of a CPU and 10 % of the throughput: there it sleeps. The samples keep coming
    while it sleeps, so it spins again once gaps shorten.
    """

    def __init__(self, spin_ns: int, wake_ns: int = WAKE_NS):
        self.spin_ns = int(spin_ns)
        self.threshold = self.spin_ns / (self.spin_ns + wake_ns) if spin_ns > 0 else 2.0
        self.payoff = 1.0

    def gap(self, ns: int) -> None:
        self.payoff += ((1.0 if ns <= self.spin_ns else 0.0) - self.payoff) / 32

    @property
    def spin(self) -> bool:
        return self.payoff >= self.threshold
