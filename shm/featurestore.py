"""Feature tables, lists and account state in POSIX shared memory, for the whole engine.

The supervisor creates one segment per table (``/risk-engine.<instance>.<pid>.ft_<name>``,
``fl_<name>``, ``st_<name>``, ``fs_control``: shm.names) before any worker starts; the workers
attach the same segments, so every worker reads and updates the same tables (exactness across
workers: shm/features/table.py's per-slot locks). Nothing here runs per event.
"""
from __future__ import annotations

import numpy as np

from shm.features.featureset import FeatureSet, array_words
from shm.features.spec import specs_from_config
from shm.names import feature_array, segment_name
from shm.segment import Segment


class FeatureStore:
    """A FeatureSet whose arrays live in shared memory. ``create`` in the supervisor,
    ``attach`` in workers (and in the admin plane, which is the supervisor's)."""

    def __init__(self, cfg, owner_pid: int, create: bool):
        self.segments: list[Segment] = []
        self.specs = specs_from_config(cfg)

        def alloc(name: str, nwords: int):
            role = feature_array(name)
            if create:   # reserved: a table that does not fit fails here, never as SIGBUS
                seg = Segment.create(cfg.instance, role, nwords * 8, owner_pid, reserve=True)
            else:
                seg = Segment.attach(segment_name(cfg.instance, role, owner_pid))
            self.segments.append(seg)
            return seg.array(np.uint64, 0, nwords), create

        try:
            self.fs = FeatureSet(self.specs, cfg.schema, alloc=alloc)
        except BaseException:
            self.fs = None
            self.close()
            if create:
                self.unlink()
            raise
        self._schema = cfg.schema

    def reinit(self) -> None:
        """Re-initialise every table, list and cell in place (same segments, so every
        compiled ruleset's arrays stay valid): the first step of a rebuild after a crash."""
        arrays = dict(zip(self.fs.arg_names(), self.fs.arrays()))
        for a in arrays.values():
            a[:] = 0
        self.fs = FeatureSet(self.specs, self._schema, alloc=lambda name, n: (arrays[name], True))

    @property
    def empty(self) -> bool:
        s = self.specs
        return not (s.features or s.lists or s.states)

    def prefault(self) -> None:
        for seg in self.segments:
            seg.prefault()

    def close(self) -> None:
        self.fs = None
        for seg in self.segments:
            seg.close()

    def unlink(self) -> None:
        for seg in self.segments:
            seg.unlink()


def table_bytes(cfg) -> dict[str, int]:
    """Bytes of every feature table, list, state table and the control block, by name."""
    return {name: 8 * n for name, n in array_words(specs_from_config(cfg)).items()}
