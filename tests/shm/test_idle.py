"""shm.idle: SpinPayoff spins only while the gaps it would bridge are short enough to pay, and
the adaptive SpinThenSleep acts on it. The spinner runs on a simulated clock and ring (Clock,
ScriptedRing), so what it does cannot depend on how loaded the machine is; a descheduled
thread is one of the scripted cases."""
import numpy as np
import pytest

from shm.idle import ADAPTIVE_FLOOR_NS, WAKE_NS, SpinPayoff, SpinThenSleep


def test_threshold_is_the_break_even_of_cpu_burnt_and_wake_ups_saved():
    p = SpinPayoff(1_000_000)
    assert p.threshold == pytest.approx(1_000_000 / (1_000_000 + WAKE_NS))
    assert SpinPayoff(100_000).threshold == pytest.approx(0.5)
    assert not SpinPayoff(0).spin                  # spin_us: 0 never spins


@pytest.mark.parametrize("long_share,spins", [(0.006, True), (0.02, True), (0.3, False), (0.6, False)])
def test_spins_when_few_gaps_exceed_the_spin(long_share, spins):
    """One client: 0.6 % of the gaps exceeded 1 ms; 100 clients on 2 cores: about a third."""
    rng = np.random.default_rng(1)
    p = SpinPayoff(1_000_000)
    for long in rng.random(2000) < long_share:
        p.gap(5_000_000 if long else 80_000)
    assert p.spin is spins


def test_recovers_once_gaps_shorten_again():
    p = SpinPayoff(1_000_000)
    for _ in range(200):
        p.gap(3_000_000)
    assert not p.spin
    for _ in range(200):                           # samples keep coming while it sleeps
        p.gap(50_000)
    assert p.spin


class Clock:
    """Simulated monotonic nanoseconds for SpinThenSleep: each reading costs ``tick_ns`` (one
    round of the spin loop). ``stall(ns, reading)``: that many readings from now, the thread
    was descheduled for ``ns`` (what a loaded machine does to a spinner at any moment)."""

    def __init__(self, tick_ns: int = 1_000):
        self.now_ns = 0
        self.tick_ns = tick_ns
        self._stalls: dict[int, int] = {}
        self.readings = 0

    def stall(self, ns: int, reading: int) -> None:
        self._stalls[self.readings + reading] = ns

    def __call__(self) -> int:
        self.readings += 1
        self.now_ns += self.tick_ns + self._stalls.pop(self.readings, 0)
        return self.now_ns


class ScriptedRing:
    """The consumer side of a ring (available / prepare_sleep / end_sleep / doorbell) whose
    next message is due at ``due_ns`` on ``clock``; its doorbell's wait moves the clock to the
    producer's ring (the message) or to the timeout, whichever comes first."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.due_ns = 0
        self.doorbell = self
        self.polls = 0
        self.sleeping = False

    def produce_after(self, gap_ns: int) -> None:
        self.due_ns = self.clock.now_ns + gap_ns

    def available(self) -> int:
        self.polls += 1
        return 1 if self.clock.now_ns >= self.due_ns else 0

    def prepare_sleep(self) -> bool:
        self.sleeping = self.available() == 0
        return self.sleeping

    def end_sleep(self) -> None:
        assert self.sleeping, "end_sleep without a sleep"
        self.sleeping = False

    def wait(self, timeout_ms: float) -> bool:            # the doorbell
        assert self.sleeping, "slept without raising the sleeping flag"
        until_ns = self.clock.now_ns + int(timeout_ms * 1_000_000)
        if self.due_ns <= until_ns:
            self.clock.now_ns = max(self.clock.now_ns, self.due_ns)
            return True
        self.clock.now_ns = until_ns
        return False


def drive(spin_us: float, gaps_ns, stalls: dict | None = None):
    """An adaptive SpinThenSleep (as a worker uses it) through one idle period per gap: the
    next message comes ``gap`` after the consumer ran out. ``stalls``: period -> ns the thread
    is descheduled just after its first look at the ring. Returns the strategy and how many
    times each period looked at the ring."""
    clock = Clock()
    ring = ScriptedRing(clock)
    idle = SpinThenSleep(spin_us=spin_us, sleep_timeout_ms=1, adaptive=True, clock=clock)
    polls = []
    for k, gap in enumerate(gaps_ns):
        ring.produce_after(gap)
        if stalls and k in stalls:
            clock.stall(stalls[k], reading=2)    # reading 1: idle() starts; 2: the spin deadline
        start = ring.polls
        for _ in range(10_000):                  # bounded: each call moves the clock on
            if idle.idle(ring):
                break
        else:
            pytest.fail(f"period {k}: no data after 10,000 idle calls")
        polls.append(ring.polls - start)
    return idle, polls


def test_an_adaptive_spinner_keeps_spinning_while_data_comes_within_the_spin():
    idle, polls = drive(2000, [200_000] * 40)     # data 0.2 ms after each idle start
    assert idle.payoff.spin and idle.payoff.payoff == 1.0
    assert idle.spin_hits == 40                   # caught by spinning: no sleep, no wake-up
    assert idle.doorbell_wakes == idle.timeout_wakes == idle.recheck_hits == 0
    assert all(p == 200 for p in polls)           # 200 us of 1 us rounds, then the data


def test_a_spinner_descheduled_once_loses_no_data_and_keeps_spinning():
    """The loaded-machine case that made the wall-clock version of the test above fail: the
    thread loses its CPU for 3 ms in mid-spin, past the spin's deadline. The data is found by
    the re-check before sleeping, and one long gap in 40 does not turn spinning off."""
    idle, _ = drive(2000, [200_000] * 40, stalls={7: 3_000_000})
    assert idle.spin_hits == 39 and idle.recheck_hits == 1
    assert idle.doorbell_wakes == idle.timeout_wakes == 0
    # one miss takes 1/32 off the average, the 32 hits after it give most of that back
    assert idle.payoff.spin and idle.payoff.payoff == pytest.approx(1 - (31 / 32) ** 32 / 32)


def test_an_adaptive_spinner_stops_spinning_when_gaps_outlast_the_spin():
    idle, polls = drive(200, [3_000_000] * 60)    # data 3 ms after each idle start
    assert not idle.payoff.spin
    assert idle.spin_hits == idle.recheck_hits == 0
    assert idle.doorbell_wakes == 60              # it slept through each gap and was woken
    assert idle.timeout_wakes == 60 * 2           # 1 ms safety timeouts within each 3 ms gap
    # the spin before each sleep: the full 200 us while it still paid, then only the floor
    floor = ADAPTIVE_FLOOR_NS // 1_000
    assert polls[0] >= 3 * 200 and polls[-1] <= 3 * (floor + 2)
    # (31/32)^k < 200 / (200 + 100): spinning stops after the 13th long gap
    assert sum(p > 3 * (floor + 2) for p in polls) == 13


def test_an_adaptive_spinner_spins_again_once_gaps_shorten():
    idle, polls = drive(2000, [3_000_000] * 20 + [200_000] * 200)
    assert idle.payoff.spin and polls[-1] == 200  # the last period caught by spinning
    assert idle.spin_hits > 0 and idle.doorbell_wakes >= 20


def test_a_plain_spinner_spins_its_full_spin_whatever_the_gaps():
    clock = Clock()
    ring = ScriptedRing(clock)
    idle = SpinThenSleep(spin_us=50, sleep_timeout_ms=1, clock=clock)
    for _ in range(40):
        ring.produce_after(3_000_000)
        start = ring.polls
        while not idle.idle(ring):
            pass
        assert ring.polls - start >= 3 * 50       # 50 us each time it ran out, then sleeps
    assert idle.payoff is None and idle.doorbell_wakes == 40 and idle.spin_hits == 0
