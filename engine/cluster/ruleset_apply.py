"""The cluster's ruleset on a node (docs/CLUSTER.md, "Control plane"), on the supervisor's thread.

Writing: ``admin reload`` on a cluster node (the same arguments, resolved by engine.admin) is
first checked completely by the single engine's code, a reload job (engine.reload.ReloadJob:
parse, AST checks, compile against the schema and the feature tables, in a child process and
again in this process) that publishes nothing; a refusal has the single engine's code and
nothing is written. Then the rule files go to the object store and the ``ruleset`` key is
written by compare-and-set on the revision read before the check (another node's reload
meanwhile: CLUSTER_CONFLICT, nothing written). The reply comes once this node has applied
the value like every other node.

Applying (every node, the writer included): the watcher's value is checked
(engine.cluster.ruleset.check_value), the files fetched and checked against it, written
to ``{run dir}/cluster-rules/<hash>/<name>`` (0700/0600) and reloaded by the single engine's
reload (a new generation, recorded for a restart). A node whose serving ruleset already has
the value's hash applies nothing. Whatever fails here (a bad value, a missing or corrupt
object, a ruleset that does not compile on this node) is logged and counted; the node keeps
serving the generation it serves and reports the ruleset as not applied (its applied record,
``cluster status``, risk_cluster_ruleset_applied 0). It tries again only on the next value or
a restart: retrying a failing compile forever would only load the node.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from engine.cluster import ruleset as rsv
from engine.cluster.control import ControlUnavailable, encode
from engine.cluster.jsopen import StoreUnavailable
from engine.reload import Refusal, ReloadJob, ruleset_spec
from engine.rules_record import read_rules, write_record
from shm.runtime.securedir import ensure_private_dir, write_private_file
from shm.runtime.textfile import TextFileError

LOCAL_DIR = "cluster-rules"


class Applied(str):
    """A reload's success outcome carrying the cluster's part of the reply."""

    def __new__(cls, text: str, cluster: dict):
        self = super().__new__(cls, text)
        self.cluster = cluster
        return self


@dataclass
class _Write:
    """An admin reload on this node: checked, then written, then applied here."""
    files: tuple
    before: list
    last: int                       # the key's revision when the check began (compare-and-set)
    job: ReloadJob | None
    on_done: object
    value: dict | None = None
    future: object = None
    rev: int = 0
    callbacks: list = field(default_factory=list)


class RulesetPlane:
    def __init__(self, sup, client, node: str):
        self.sup, self.client, self.node = sup, client, node
        self.wanted: tuple[int, rsv.RulesetValue] | None = None    # the bucket's, checked
        self.applied_rev = 0         # the last ruleset revision this node serves
        self.failed_rev = 0          # the last revision it could not apply
        self.failure = ""            # why
        self.errors = 0              # ruleset values and objects not applied here
        self.lag_ms = 0.0            # applied time minus the writer's time_ns, of the last one
        self.fetch = None            # (rev, value, future) of the objects being fetched
        self.applying = None         # (rev, value) while this node's reload runs
        self.write: _Write | None = None
        self.on_change = lambda: None    # the control plane republishes the applied record
        self._store = None
        self._announced = False      # the applied record written once the node serves

    # --- the value from the watcher ------------------------------------------------------------

    def seen(self, rev: int, doc) -> bool:
        """A ``ruleset`` value from the watcher (applied later by poll, or at_start)."""
        try:
            value = rsv.check_value(doc)
        except ValueError as e:
            self._failed(rev, f"a bad ruleset value: {e}")
            raise
        self.wanted = (rev, value)
        return False

    def serving_hash(self) -> str | None:
        rs = self.sup.rulesets
        return rsv.spec_hash(rs.specs[rs.generation]) if rs is not None and rs.generation else None

    def record(self) -> dict:
        """This node's ruleset for its applied record and `admin cluster`."""
        rev, v = self.wanted if self.wanted else (0, None)
        rs = self.sup.rulesets
        failing = self.failed_rev > self.applied_rev      # the newest value it saw failed here
        return {"revision": self.applied_rev, "wanted_revision": max(rev, self.failed_rev),
                "hash": self.serving_hash(),
                "label": rs.specs[rs.generation]["label"] if rs is not None and rs.generation else None,
                "applied": not failing and (v is None or self.applied_rev >= rev),
                "errors": self.errors, "failure": self.failure[:300] if failing else "",
                "lag_ms": self.lag_ms}

    def _failed(self, rev: int, why: str) -> None:
        self.errors += 1
        self.failed_rev, self.failure = max(self.failed_rev, rev), why
        serving = self.sup.rulesets
        now = f"generation {serving.generation} keeps serving" if serving is not None else \
            "this node starts with its own ruleset"
        self.sup.log(f"risk-engine: cluster: ruleset revision {rev} not applied here ({now}): {why[:500]}")
        self.on_change()

    def _applied(self, rev: int, value: rsv.RulesetValue) -> None:
        self.applied_rev = max(self.applied_rev, rev)
        if value.time_ns:
            self.lag_ms = (time.time_ns() - value.time_ns) / 1e6
        self.on_change()

    # --- applying --------------------------------------------------------------------------------

    def _js(self):
        return self.client.jetstream()

    async def _fetch(self, value):
        if self._store is None:
            self._store = await rsv.open_store(self._js(), self.client.replicas)
        return await rsv.fetch_files(self._store, value)

    def local_files(self, value: rsv.RulesetValue, texts) -> tuple[str, ...]:
        """The fetched files in this node's run directory, named as in the value."""
        d = self.sup.run_dir / LOCAL_DIR / value.hash[:32]
        ensure_private_dir(d, "cluster rule files")
        out = []
        for name, text in texts:
            write_private_file(d / name, text.encode())
            out.append(str(d / name))
        return tuple(out)

    def at_start(self, spec: dict, rs):
        """Before the node serves: the bucket's ruleset instead of ``spec`` when it differs,
        compiled as a start compiles; on any failure the node starts with ``spec``."""
        if self.wanted is None:
            return spec, rs
        rev, value = self.wanted
        if value.hash == rsv.spec_hash(spec):
            self._applied(rev, value)
            return spec, rs
        try:
            texts = self.client.call(self._fetch(value), rsv.GET_TIMEOUT_S * len(value.files) + 5)
            paths = self.local_files(value, texts)
            new, new_rs = ruleset_spec(self.sup.cfg, paths, self.sup.features.fs, [t for _, t in texts])
            new["origin_files"] = list(paths)
            new["recorded"] = write_record(self.sup.cfg, read_rules([(p, p) for p in paths]), new["label"])
        except (rsv.RulesetObjectError, ControlUnavailable, StoreUnavailable, asyncio.TimeoutError, OSError,
                TextFileError) as e:
            self._failed(rev, f"{type(e).__name__}: {e}")
            return spec, rs
        except Exception as e:          # noqa: BLE001 - a ruleset that does not compile here
            self._failed(rev, f"does not compile on this node: {e}")
            return spec, rs
        self.sup.log(f"risk-engine: cluster: serving the cluster's ruleset {new['label']} "
                     f"(revision {rev}, hash {value.hash[:16]}) instead of {spec['label']}")
        self._applied(rev, value)
        return new, new_rs

    def poll(self) -> None:
        if not self._announced:         # at_start ran before a generation was published
            self._announced = True
            self.on_change()
        if self.write is not None:
            self._poll_write()
        if self.fetch is not None:
            self._poll_fetch()
        if self.wanted is None or self.fetch is not None or self.applying is not None:
            return
        rev, value = self.wanted
        if rev <= max(self.applied_rev, self.failed_rev):
            return
        if value.hash == self.serving_hash():
            self._applied(rev, value)
            return
        if self.sup.rulesets.job is not None or self.sup.rulesets.switch is not None:
            return                      # a local reload runs: after it
        self.fetch = (rev, value, self.client.submit(self._fetch(value)))

    def _poll_fetch(self) -> None:
        rev, value, fut = self.fetch
        if not fut.done():
            return
        self.fetch = None
        try:
            texts = fut.result()
            paths = self.local_files(value, texts)
        except Exception as e:          # noqa: BLE001 - reported, counted, never fatal
            self._failed(rev, f"{type(e).__name__}: {e}")
            return
        self.applying = (rev, value)
        refused = self.sup.rulesets.reload(paths, on_done=lambda outcome: self._reloaded(rev, value, outcome))
        if refused:
            self.applying = None
            if refused.code != "RELOAD_BUSY":
                self._failed(rev, f"{refused.code}: {refused}")

    def _reloaded(self, rev, value, outcome) -> None:
        self.applying = None
        if isinstance(outcome, Refusal):
            self._failed(rev, f"{outcome.code}: {outcome}")
        else:
            self._applied(rev, value)

    # --- writing (this node's admin reload) -------------------------------------------------------

    def reload(self, files=None, previous: bool = False, on_done=None) -> Refusal | None:
        """engine.reload.Rulesets.reload's contract, through the cluster: a refusal now, or
        None and ``on_done(outcome)`` once this node applied the value written."""
        rs = self.sup.rulesets
        if self.write is not None or rs.job is not None or rs.switch is not None:
            return Refusal("reload refused: another reload is in progress", "RELOAD_BUSY")
        res = rs.resolve(files, previous)         # the single engine's refusals, same codes
        if isinstance(res, Refusal):
            return res
        files, before = res
        try:
            rsv.make_value("", [(os.path.basename(r.path), r.text) for r in before])
        except ValueError as e:
            return Refusal(f"reload refused: {e}")
        try:
            last, _ = self.client.get(rsv.KEY)
        except ControlUnavailable as e:
            return Refusal(f"reload refused: nothing changed: {e}", "CLUSTER_UNAVAILABLE")
        try:
            job = ReloadJob(rs, files)
        except OSError as e:
            return Refusal(f"reload refused: cannot start the reload process: {e}")
        job.before = before
        self.write = _Write(files, before, last, job, on_done)
        return None

    def _finish(self, outcome) -> None:
        w, self.write = self.write, None
        if w.job is not None:
            w.job.kill()
        if isinstance(outcome, Refusal) and outcome.code == "RULESET_REFUSED":
            self.sup.rulesets.block.view("supervisor.reload_errors")[0] += 1
        if w.on_done is not None:
            w.on_done(outcome)

    def _poll_write(self) -> None:
        w = self.write
        if w.job is not None:
            try:
                res = w.job.poll()
            except Exception as e:      # noqa: BLE001 - a refusal, never the loop's end
                res = f"reload failed: {type(e).__name__}: {e}"
            if res is None:
                return
            w.job = None
            if isinstance(res, str):
                self.sup.log(f"risk-engine: reload refused, nothing written to the cluster:\n{res}")
                return self._finish(Refusal(f"reload refused: {res}"))
            spec, _rs = res
            texts = [(os.path.basename(r.path), r.text) for r in w.before]
            w.value = {**rsv.make_value(spec["label"], texts), "by": self.node, "time_ns": time.time_ns()}
            w.future = self.client.submit(self._put(texts, w.value, w.last))
            return
        if w.future is not None:
            if not w.future.done():
                return
            fut, w.future = w.future, None
            try:
                w.rev = fut.result()
            except Exception as e:      # noqa: BLE001 - NATS down, no quorum, a timeout
                return self._finish(Refusal(f"reload refused: nothing changed: the cluster's "
                                            f"ruleset could not be written: {type(e).__name__}: {e}",
                                            "CLUSTER_UNAVAILABLE"))
            if w.rev is None:
                return self._finish(Refusal(f"reload refused: the cluster's ruleset changed since "
                                            f"revision {w.last} while this reload was checked; "
                                            f"nothing written", "CLUSTER_CONFLICT"))
            return
        cluster = {"revision": w.rev, "node": self.node, "hash": w.value["hash"]}
        if self.applied_rev >= w.rev:
            rs = self.sup.rulesets
            self._finish(Applied(f"generation {rs.generation} = {rs.specs[rs.generation]['label']}", cluster))
        elif self.failed_rev >= w.rev:
            self._finish(Refusal(f"written to the cluster at revision {w.rev} (the other nodes apply "
                                 f"it) but not applied on this node: {self.failure}",
                                 "CLUSTER_RULESET_NOT_APPLIED"))

    async def _put(self, texts, value, last):
        if self._store is None:
            self._store = await rsv.open_store(self._js(), self.client.replicas)
        await rsv.put_files(self._store, texts)
        return await self.client.write_async(rsv.KEY, encode(value), last)

