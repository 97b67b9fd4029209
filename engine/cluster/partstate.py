"""One partition's feature state in this node's shared feature tables (docs/CLUSTER.md,
"Failover in serve"): what a take-over restores and what a partition snapshot object holds.

The tables hold every partition's keys in one hash table each; a partition's rows are the used
slots whose key (the shard key: in cluster mode every feature is keyed by it alone,
shm.runtime.config_cluster) falls in the partition. ``export(p)`` copies them out as one
uint64[n, slot_words] array per feature table (``ft_<name>``); ``restore(p, arrays)`` empties
the partition's rows (shm.features.rows: an emptied row reads and updates as an absent key)
and writes the given ones; ``apply(records)`` commits journal records exactly as the serving
kernel did for their recorded actions (the ruleset's update-only kernel, as recovery does).

Only partition p's rows are touched, each under its slot lock: the workers go on serving the
other partitions meanwhile. Nothing may update p's keys during a restore and its replay: p is
not servable until the take-over returns (the lease agent's ``prepare``), which holds once the
ingress refuses requests of partitions this node does not serve (docs/CLUSTER.md, "Next").
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.cluster.partition import partition_of_keys
from shm.features.rows import copy_rows, empty_payload, empty_rows, put_rows, used_keys
from shm.features.table import ERR_FULL, KEY_OFF, META_OFF, PAYLOAD_OFF


class PartitionStateError(RuntimeError):
    """A partition's rows cannot be read or written (a lock timeout, a full table), or a
    snapshot's arrays do not fit this node's feature tables."""


class PartitionState:
    def __init__(self, fs, ruleset: Callable[[], object], partitions: int):
        """``fs``: the FeatureSet of the shared tables; ``ruleset()``: the serving ruleset
        (its update-only kernel); ``partitions``: cluster.partitions."""
        self.fs, self.ruleset, self.partitions = fs, ruleset, int(partitions)
        self.tables = [(f"ft_{s.name}", s) for s in fs.specs.features]

    def _keys(self, name: str, spec, p: int) -> np.ndarray:
        keys = used_keys(self.fs.array(name), spec.capacity, spec.slot_words)
        return keys[partition_of_keys(keys, self.partitions) == p]

    def export(self, p: int) -> dict:
        """Partition p's rows, one array per feature table (module doc)."""
        out = {}
        for name, s in self.tables:
            keys = self._keys(name, s, p)
            rows = np.zeros((len(keys), s.slot_words), np.uint64)
            n = copy_rows(self.fs.array(name), s.capacity, s.slot_words, s.probe_len, keys, rows)
            if n < 0:
                raise PartitionStateError(f"partition={p} table={name}: a slot lock timed out "
                                          f"(a worker died holding it?)")
            rows = rows[:n]
            empty = (rows[:, META_OFF] == 0) & (rows[:, PAYLOAD_OFF:] ==
                                                empty_payload(s.kind, s.nbuckets, s.slot_words)).all(axis=1)
            out[name] = rows[~empty]     # emptied rows are absent keys (shm.features.rows)
        return out

    def check(self, p: int, arrays: dict) -> None:
        """Raise PartitionStateError unless ``arrays`` are partition p's rows of exactly this
        node's feature tables (checked before any row is written)."""
        want = {name for name, _ in self.tables}
        if set(arrays) != want:
            raise PartitionStateError(f"partition={p}: snapshot tables {sorted(arrays)} are not this "
                                      f"node's feature tables {sorted(want)} (config changed?)")
        for name, s in self.tables:
            a = arrays[name]
            if a.dtype != np.uint64 or a.ndim != 2 or a.shape[1] != s.slot_words:
                raise PartitionStateError(f"partition={p} table={name}: rows {a.dtype}{a.shape}, "
                                          f"this node's slots are {s.slot_words} u64 words")
            if len(a) and (partition_of_keys(a[:, KEY_OFF], self.partitions) != p).any():
                raise PartitionStateError(f"partition={p} table={name}: holds keys of other partitions")

    def restore(self, p: int, arrays: dict | None) -> None:
        """Partition p's rows := ``arrays`` (None: none, every row of p emptied)."""
        if arrays is not None:
            self.check(p, arrays)
        for name, s in self.tables:
            t = self.fs.array(name)
            rc = empty_rows(t, s.capacity, s.slot_words, s.probe_len, self._keys(name, s, p),
                            empty_payload(s.kind, s.nbuckets, s.slot_words))
            if rc >= 0 and arrays is not None and len(arrays[name]):
                rc = put_rows(t, s.capacity, s.slot_words, s.probe_len, np.ascontiguousarray(arrays[name]))
            if rc < 0:
                why = "no slot left in a probe window" if rc == ERR_FULL else "a slot lock timed out"
                raise PartitionStateError(f"partition={p} table={name}: cannot restore: {why}")

    def apply(self, records: np.ndarray) -> None:
        """Commit journal records (journal dtype, one partition's, in order) to the tables."""
        rs = self.ruleset()
        rs.apply_updates(records["event"], records["arrival_ns"], records["action"],
                         *(self.fs.array(n) for n in rs.feature_args))
