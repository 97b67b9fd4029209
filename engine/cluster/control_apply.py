"""Admin changes in cluster mode (docs/CLUSTER.md, "Control plane"), on the supervisor's thread.

Writing: ``halt``, ``resume``, ``list-add|remove|replace`` and ``set-state`` on a cluster node
are checked completely by the same code as on a single engine (engine.admin_state: the
list exists, every value parses, the capacity holds, the key is in its field's range and has
a slot) before anything is written to the control bucket; a refusal has the same code and
nothing reaches KV. The change is then written as the key's new whole value (a list: the
bucket's current set, or this node's when the bucket has none yet, with the change made,
written by compare-and-set on the revision read, retried on a concurrent write), and the
reply waits until this node has applied it like every other node does.

Applying (every node, the writer included): each value from the watcher goes through the
same checks and the same log-then-publish functions as an admin request (admin.log gets the
record, so a worker-crash rebuild or a restart replays it); a value equal to what the node
holds already changes nothing and logs nothing (a join re-reads every key). A value this
node cannot apply (a list or state its config lacks, a malformed value) is counted and
logged, never fatal: the operator sees it in the node's applied record (``errors``).
"""
from __future__ import annotations

import json
import queue
import time

import numpy as np

from engine import admin_state
from engine.admin_request import MAX_DEPTH, AdminError, json_depth
from engine.cluster.control import APPLIED, INITIAL, ControlUnavailable, encode, list_key, state_key
from shm.features.featureset import CONTROL_ARG
from shm.features.keys import key_from_python
from shm.features.lists import list_values
from shm.ipv6 import cidr6_key, format_cidr6
from shm.features.state import STATE_NAMES, W_HALT, _read_state

CAS_ATTEMPTS = 8
APPLY_WAIT_S = 10.0
MAX_VALUE_BYTES = 900_000        # under NATS's default max_payload (1 MiB) with the JSON around it


def list_set(doc, vtype: str) -> np.ndarray:
    """A list value's set, checked: sorted unique u64s, or for a cidr6 list (136-bit values,
    shm.ipv6) an object array of valid prefixes' ints. Raises ValueError."""
    vals = doc.get("values") if isinstance(doc, dict) else None
    if vtype == "cidr6":
        if not isinstance(vals, list) or not all(type(v) is int and 0 <= v < 129 << 128 for v in vals):
            raise ValueError("values: not a list of cidr6 values")
        for v in vals:                    # host bits set, a length over 128: refused
            cidr6_key(format_cidr6(v))
        return np.array(sorted(set(vals)), dtype=object)
    if not isinstance(vals, list) or not all(type(v) is int and 0 <= v < 2**64 for v in vals):
        raise ValueError("values: not a list of u64")
    return np.unique(np.array(vals, np.uint64))


class ControlPlane:
    """This node's side of the control bucket: the writes its admin plane makes, the
    entries its watcher queued, and the revision it has applied."""

    def __init__(self, sup, client, node: str):
        self.sup, self.client, self.node = sup, client, node
        self.revision = 0            # the last change revision applied (in the bucket's order)
        self.applied = 0             # changes that changed something here
        self.errors = 0              # values this node could not apply
        self.last_lag_ms = 0.0       # apply time minus the writer's time_ns, of the last change
        self.ruleset = None          # engine.cluster.ruleset_apply.RulesetPlane (the `ruleset` key)

    # --- joining and applying ------------------------------------------------------------------

    def join(self, timeout_s: float) -> int:
        """Apply every current value of the bucket (before this node serves): how many."""
        n = self.drain(until=INITIAL, timeout_s=timeout_s)
        if n is None:
            raise ControlUnavailable(f"bucket={self.client.bucket}: its current values did not "
                                     f"arrive within {timeout_s:g} s")
        return n

    def drain(self, until=None, timeout_s: float = 0.0) -> int | None:
        """Apply what the watcher queued; with ``until`` (INITIAL, or a revision) wait for it
        up to ``timeout_s``: None if it did not come."""
        deadline = time.monotonic() + timeout_s
        n, done = 0, until is None
        while True:
            if isinstance(until, int) and self.revision >= until:
                done = True
            wait = max(0.0, deadline - time.monotonic())
            try:
                e = self.client.entries.get(timeout=wait) if not done and wait else \
                    self.client.entries.get_nowait()
            except queue.Empty:
                break
            if e is INITIAL:
                done = done or until is INITIAL
                continue
            n += self._apply(e)
        if n or (until is INITIAL and done):
            self.publish_applied()
        return n if done else None

    def publish_applied(self) -> None:
        rec = {"node": self.node, "revision": self.revision, "lag_ms": self.last_lag_ms,
               "time_ns": time.time_ns(), "errors": self.errors}
        if self.ruleset is not None:
            rec["ruleset"] = self.ruleset.record()
        self.client.record_applied(rec)

    def _apply(self, e) -> int:
        if e.key.startswith(APPLIED) or e.operation in ("DEL", "PURGE") or e.value is None:
            return 0
        doc = None
        try:
            if json_depth(e.value) > MAX_DEPTH:       # anyone with NATS access can write it
                raise ValueError(f"JSON nested over {MAX_DEPTH} deep")
            doc = json.loads(e.value)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            if e.key == "halt":
                changed = self._halt(doc)
            elif e.key.startswith("list."):
                changed = self._list(doc)
            elif e.key.startswith("state."):
                changed = self._state(doc)
            elif e.key == "ruleset" and self.ruleset is not None:
                changed = self.ruleset.seen(e.revision, doc)      # applied by its poll()
            else:
                raise ValueError("unknown key")
        except (AdminError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            self.errors += 1
            self.sup.log(f"risk-engine: cluster: control key {e.key} revision {e.revision} not "
                         f"applied here: {getattr(err, 'code', type(err).__name__)}: {str(err)[:200]}")
            changed = False
        self.revision = max(self.revision, e.revision)
        if isinstance(doc.get("time_ns") if isinstance(doc, dict) else None, int):
            self.last_lag_ms = (time.time_ns() - doc["time_ns"]) / 1e6
        self.applied += changed
        return 1

    def _halt(self, doc) -> bool:
        on = doc["on"]
        if not isinstance(on, bool):
            raise ValueError("on: not true or false")
        if bool(admin_state._fs(self.sup).array(CONTROL_ARG)[W_HALT]) == on:
            return False
        admin_state.halt(self.sup, {"cmd": "halt" if on else "resume"})
        return True

    def _list(self, doc) -> bool:
        spec = admin_state._list_spec(self.sup, doc["name"])
        new = list_set(doc, spec.type)
        admin_state.check_capacity(spec, new)
        if np.array_equal(new, list_values(self.sup.features.fs.array(f"fl_{spec.name}"))):
            return False
        admin_state.apply_list(self.sup, spec.name, "replace", new, new)
        return True

    def _state(self, doc) -> bool:
        if doc["state"] not in STATE_NAMES:
            raise ValueError(f"state: {str(doc['state'])[:20]!r}")
        if self._state_now(doc) == doc["state"]:
            return False
        admin_state.set_state(self.sup, {"cmd": "set-state", "name": doc["name"], "key": doc["key"],
                                         "state": doc["state"]})
        return True

    def _state_now(self, doc) -> str | None:
        name, key = admin_state.check_state(self.sup, doc)
        fs = self.sup.features.fs
        spec = next(s for s in self.sup.features.specs.states if s.name == name)
        k = np.uint64(key_from_python(key, fs.schema.field(spec.key).type))
        code = int(_read_state(fs.array(f"st_{name}"), spec.capacity, spec.slot_words, spec.probe_len, k))
        return next((n for n, c in STATE_NAMES.items() if c == code), None)

    # --- writing (the admin plane of this node) ------------------------------------------------

    def _stamp(self, doc: dict) -> bytes:
        return encode({**doc, "by": self.node, "time_ns": time.time_ns()})

    def _commit(self, rev: int, reply: dict) -> dict:
        if self.drain(until=rev, timeout_s=APPLY_WAIT_S) is None and self.revision < rev:
            raise AdminError("CLUSTER_APPLY_PENDING", f"written at revision {rev} of the control "
                             f"bucket; this node has not applied it within {APPLY_WAIT_S:g} s")
        return {**reply, "cluster": {"revision": rev, "node": self.node}}

    def _write(self, key: str, value: bytes, last: int | None = None) -> int | None:
        if len(value) > MAX_VALUE_BYTES:
            raise AdminError("CLUSTER_VALUE_TOO_LARGE", f"{key}: {len(value)} bytes over "
                                                        f"{MAX_VALUE_BYTES} for one control value")
        try:
            return self.client.write(key, value, last)
        except ControlUnavailable as e:
            raise AdminError("CLUSTER_UNAVAILABLE", f"nothing changed: {e}") from None

    def halt(self, sup, args) -> dict:
        admin_state._fs(sup)
        on = args["cmd"] == "halt"
        rev = self._write("halt", self._stamp({"on": on}))
        return self._commit(rev, {"global_halt": on})

    def set_state(self, sup, args) -> dict:
        name, key = admin_state.check_state(sup, args)         # the single engine's checks
        doc = {"name": name, "key": key, "state": args["state"]}
        rev = self._write(state_key(name, key), self._stamp(doc))
        return self._commit(rev, doc)

    def list_change(self, sup, args) -> dict:
        admin_state._fs(sup)
        spec = admin_state._list_spec(sup, args["name"])
        vals = admin_state._values(sup, spec, args)              # parsed, nothing applied
        op = args["cmd"].split("-", 1)[1]
        key = list_key(spec.name)
        for _ in range(CAS_ATTEMPTS):
            try:
                last, raw = self.client.get(key)
            except ControlUnavailable as e:
                raise AdminError("CLUSTER_UNAVAILABLE", f"nothing changed: {e}") from None
            base = list_values(sup.features.fs.array(f"fl_{spec.name}"))
            if raw and op != "replace":
                try:
                    base = list_set(json.loads(raw), spec.type) if json_depth(raw) <= MAX_DEPTH else None
                except ValueError:
                    base = None
                if base is None:
                    raise AdminError("CLUSTER_VALUE_CORRUPT", f"{key} in the control bucket is "
                                     f"not a list value; list-replace overwrites it")
            new = {"add": lambda: np.union1d(base, vals), "remove": lambda: np.setdiff1d(base, vals),
                   "replace": lambda: np.unique(vals)}[op]()
            admin_state.check_capacity(spec, new)
            rev = self._write(key, self._stamp({"name": spec.name, "values": [int(v) for v in new]}), last)
            if rev is not None:
                return self._commit(rev, {"name": spec.name, "count": int(len(new))})
        raise AdminError("CLUSTER_CONFLICT", f"list={spec.name!r}: changed by other writers "
                                             f"{CAS_ATTEMPTS} times in a row; nothing changed here")

    def commands(self) -> dict:
        """The admin commands that change risk state, replaced in cluster mode (same schemas)."""
        base = admin_state.COMMANDS
        out = {c: (self.list_change, base[c][1]) for c in ("list-add", "list-remove", "list-replace")}
        out["set-state"] = (self.set_state, base["set-state"][1])
        out["halt"] = (self.halt, base["halt"][1])
        out["resume"] = (self.halt, base["resume"][1])
        return out
