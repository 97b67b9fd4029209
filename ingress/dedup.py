"""The idempotency window: a retry with the same (client id, request id) gets the first
decision, and is never evaluated twice (no feature counts an event twice).

Two tables:
- in flight: key -> the pending request; a retry arriving before the decision is attached
  to it and answered together with the first copy;
- decided: key -> (expiry_ns, N, the response slots as bytes), in arrival order, for
  ``dedup_window_s``. Entries hold only ints and bytes, so the garbage collector stops
  tracking them (a window of 100k entries would otherwise make every full collection walk
  them), and cost about 100 B + 64 B per event. At most ``max_entries``; the oldest go first.

The cached decision is transport-neutral (response slots), so a retry is answered in its own
transport (binary or JSON), with DecisionFlag.DUPLICATE set. The window lives in the ingress
process: an ingress restart forgets it (documented in docs/RELIABILITY.md).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from engine.types import RESPONSE_SLOT_DTYPE, DecisionFlag

DEFAULT_MAX_ENTRIES = 1 << 18


class IdempotencyWindow:
    def __init__(self, window_ns: int, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.window_ns = window_ns
        self.max_entries = max_entries
        self.inflight: dict[tuple[int, int], object] = {}
        self.decided: OrderedDict[tuple[int, int], tuple[int, int, bytes]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.window_ns > 0

    def pending(self, key):
        """The in-flight request with this key, or None."""
        return self.inflight.get(key)

    def decided_slots(self, key, now_ns: int, n: int):
        """A copy of the first decision's slots flagged DUPLICATE, or None. A key reused
        for a request of another size is not a retry: None (it is decided afresh)."""
        hit = self.decided.get(key)
        if hit is None or hit[0] <= now_ns or hit[1] != n:
            return None
        slots = np.frombuffer(hit[2], RESPONSE_SLOT_DTYPE).copy()
        slots["flags"] |= np.uint8(DecisionFlag.DUPLICATE)
        return slots

    def start(self, key, pending) -> None:
        self.inflight[key] = pending

    def finish(self, key, slots: np.ndarray, now_ns: int) -> None:
        self.inflight.pop(key, None)
        d = self.decided
        d[key] = (now_ns + self.window_ns, len(slots), slots.tobytes())
        d.move_to_end(key)
        while d:                                   # expiry is monotonic: drop from the front
            k, v = next(iter(d.items()))
            if v[0] > now_ns and len(d) <= self.max_entries:
                break
            del d[k]

    def forget(self, key) -> None:
        self.inflight.pop(key, None)
