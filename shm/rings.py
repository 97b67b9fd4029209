"""The pair of rings between the ingress and one worker, as each process sees them.

    ingress --req<w>--> worker <w>     request slots (shm.types.request_slot_dtype);
                                        doorbell: a posix_ipc semaphore the worker sleeps on
    ingress <--resp<w>-- worker <w>     response slots (RESPONSE_SLOT_DTYPE); doorbell: the
                                        eventfd every response ring shares, which the ingress
                                        polls together with its ROUTER socket
    ingress <--fired<w>- worker <w>     the full fired list of a decision with more than
                                        MAX_FIRED fired rules (FIRED_SLOT_DTYPE), published
                                        before its response slot; no doorbell of its own

The supervisor creates both (it owns their lifetime); the ingress and the worker attach by
the full names in plan.json (roles: shm.names).
"""
from __future__ import annotations

from shm import names
from shm.types import FIRED_SLOT_DTYPE, RESPONSE_SLOT_DTYPE, request_slot_dtype
from shm.doorbell import EventfdDoorbell, SemaphoreDoorbell
from shm.idle import SleepingBackoff, SpinThenSleep
from shm.ring import OneToOneRing
from shm.segment import Segment
from shm.layout import segment_bytes

WORKER_SLEEP_TIMEOUT_MS = 50.0  # safety net against a lost wake-up; also the stop-poll period


def attach_segment(full_name: str) -> Segment:
    return Segment.attach(full_name)


class _Idle:
    """Binds an idle strategy to the ring it waits on: ``wait()`` from the loop."""

    def __init__(self, strategy, ring=None):
        self.strategy, self.ring = strategy, ring

    def wait(self) -> None:
        if self.ring is None:
            self.strategy.idle()
        else:
            self.strategy.idle(self.ring)


def ring_bytes(cfg) -> int:
    """Bytes of one worker's request and response ring segments."""
    cap = cfg.rings.capacity
    return (segment_bytes(cap, request_slot_dtype(cfg.schema.dtype).itemsize)
            + segment_bytes(cap, RESPONSE_SLOT_DTYPE.itemsize) + segment_bytes(cap, FIRED_SLOT_DTYPE.itemsize))


class EngineRings:
    def __init__(self, request: OneToOneRing, response: OneToOneRing, bell: SemaphoreDoorbell,
                 eventfd: EventfdDoorbell | None, spin_us: float = 0.0, fired: OneToOneRing | None = None):
        self.request = request
        self.response = response
        self.fired = fired
        self.bell = bell
        self.eventfd_bell = eventfd
        self.worker_idle = _Idle(SpinThenSleep(spin_us, WORKER_SLEEP_TIMEOUT_MS, yield_cpu=True,
                                               adaptive=True), request)
        self.response_full_idle = _Idle(SleepingBackoff())

    @classmethod
    def create(cls, cfg, owner_pid: int, w: int, eventfd: EventfdDoorbell) -> "EngineRings":
        cap = cfg.rings.capacity
        bell = SemaphoreDoorbell.create(cfg.instance, names.request_bell(w), owner_pid)
        req = OneToOneRing.create(names.request_ring(w), cap, request_slot_dtype(cfg.schema.dtype),
                                  instance=cfg.instance, owner_pid=owner_pid, doorbell=bell)
        resp = OneToOneRing.create(names.response_ring(w), cap, RESPONSE_SLOT_DTYPE, instance=cfg.instance,
                                   owner_pid=owner_pid, doorbell=eventfd)
        fired = OneToOneRing.create(names.fired_ring(w), cap, FIRED_SLOT_DTYPE, instance=cfg.instance,
                                    owner_pid=owner_pid)
        return cls(req, resp, bell, eventfd, cfg.workers.spin_us, fired)

    @classmethod
    def attach(cls, cfg, plan: dict, w: int, eventfd: EventfdDoorbell) -> "EngineRings":
        req_name, resp_name, bell_name = plan["workers"][w]["rings"]
        bell = SemaphoreDoorbell.open(bell_name)
        req = OneToOneRing.attach(req_name, request_slot_dtype(cfg.schema.dtype), doorbell=bell)
        resp = OneToOneRing.attach(resp_name, RESPONSE_SLOT_DTYPE, doorbell=eventfd)
        fired = OneToOneRing.attach(names.fired_ring_name(resp_name, w), FIRED_SLOT_DTYPE)
        return cls(req, resp, bell, eventfd, cfg.workers.spin_us, fired)

    def names(self) -> list[str]:
        return [self.request.name, self.response.name, self.bell.name]

    # --- worker side ---------------------------------------------------------------------------

    def prefault(self) -> None:
        """First touch of both rings' slots from the pinned worker: node-local pages."""
        self.request.prefault()
        self.response.prefault()
        if self.fired is not None:
            self.fired.prefault()

    # --- ingress side --------------------------------------------------------------------------

    def free_request_slots(self) -> int:
        """Room in the request ring. Only the ingress produces, so it can only grow meanwhile."""
        return self.request.capacity - self.request.occupancy()

    # --- supervisor side -----------------------------------------------------------------------

    def wake_worker(self) -> None:
        self.bell.ring()

    def occupancy(self) -> tuple[int, int]:
        return self.request.occupancy(), self.response.occupancy()

    def close(self) -> None:
        for r in (self.request, self.response, self.fired):
            if r is not None:
                r.doorbell = None          # doorbells are shared; closed by their owner
                r.close()
        self.bell.close()

    def unlink(self) -> None:
        self.request.unlink()
        self.response.unlink()
        if self.fired is not None:
            self.fired.unlink()
        self.bell.unlink()
