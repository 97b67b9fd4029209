"""An engine node of the cluster: what `risk-engine serve` with a ``cluster:`` section adds to
the supervisor (docs/CLUSTER.md, "Serving with cluster:").

- ``ClusterNode.join(sup, spec, rs)`` (start-up, after the feature state is recovered, before
  any worker starts): the OwnershipTable goes into a shared-memory segment of the instance
  (``ownership``, 0600, removed with the others on every stop) for the ingress to read; the
  control bucket is opened and every current value applied (engine.cluster.control_apply),
  so the node serves with the cluster's halt, lists, account states and ruleset
  (engine.cluster.ruleset_apply: the ruleset to serve is returned).
- ``start_leases()`` (once the node is ready): the lease agent on its own thread, writing
  the table in the segment, and on the same event loop the journal tailer
  (engine.cluster.replicate): each lease taken is fenced on the replication stream before
  the table shows it.
- ``poll()`` (the supervisor's loop): apply the control changes the watcher queued (a
  ruleset: fetched and reloaded without blocking the loop); say once
  if the agent has died (its leases lapse by themselves).
- ``close()`` (every stop): stop serving every partition, release the leases, close NATS.

A node whose NATS servers do not answer within OPEN_TIMEOUT_S fails to start with one line
(StartupError: exit 2), like the agent run alone.
"""
from __future__ import annotations

import asyncio
import threading

import nats.errors

from engine.cluster.agent import OPEN_TIMEOUT_S, LeaseAgent
from engine.cluster.agentthread import AgentThread
from engine.cluster.control import ControlClient, ControlUnavailable
from engine.cluster.control_apply import ControlPlane
from engine.cluster.handover import TakeJobs
from engine.cluster.leases import LeaseError
from engine.cluster.members import share
from engine.cluster.ownership import OwnershipTable
from engine.cluster.partstate import PartitionState
from engine.cluster.replicate import Replicator
from engine.cluster.ruleset_apply import RulesetPlane
from engine.cluster.tailwake import TailerWake
from engine.preflight import StartupError
from ingress.partmap import PartitionMap, PartitionMapError
from shm.doorbell import EventfdDoorbell
from shm.features.featureset import FeatureSet
from shm.ownership import SEGMENT as OWNERSHIP, segment_bytes
from shm.replication import SEGMENT as REPLICATION, ReplicationMarks, segment_bytes as marks_bytes
from shm.runtime.config_types import ConfigError
from shm.segment import Segment

EVENTS = ("acquired", "adopted", "ready", "prepare_failed", "renewed", "lost", "released", "nats_error")


class ClusterNode:
    def __init__(self, sup, open_timeout_s: float = OPEN_TIMEOUT_S):
        self.sup, self.cfg = sup, sup.cfg.cluster
        self.open_timeout_s = open_timeout_s
        self.replicas = min(3, len(self.cfg.servers))
        self.segment: Segment | None = None
        self.table: OwnershipTable | None = None
        self.marks_segment: Segment | None = None   # ack: sync workers read it (shm.replication)
        self.marks: ReplicationMarks | None = None
        self.bell: EventfdDoorbell | None = None    # ack: sync workers wake the tailer (tailwake)
        self.client: ControlClient | None = None
        self.control: ControlPlane | None = None
        self.ruleset: RulesetPlane | None = None    # the cluster's ruleset (control key `ruleset`)
        self.agent: AgentThread | None = None
        self.map: PartitionMap | None = None        # owners' addresses for NOT_OWNER replies
        self.replicator: Replicator | None = None
        self.jobs: TakeJobs | None = None
        self.counts = dict.fromkeys(EVENTS, 0)      # agent events (risk_cluster_lease_events_total)
        self._taking: dict[int, dict] = {}          # p -> its "acquired" event, until "ready"
        self.live_nodes = 0
        self._started = threading.Event()
        self._reported_error = False

    def _fail(self, why: str) -> StartupError:
        return StartupError(f"cluster: servers={','.join(self.cfg.servers)}: {why}")

    @classmethod
    def join(cls, sup, spec: dict, rs) -> tuple["ClusterNode", dict, object]:
        """Join; the ruleset to serve: the bucket's when it has one that compiles here, else
        ``spec``/``rs`` (engine.cluster.ruleset_apply)."""
        node = cls(sup)
        sup.cluster = node                # cleanup() closes it whatever fails below
        p = node.cfg.partitions
        node.segment = Segment.create(sup.cfg.instance, OWNERSHIP, segment_bytes(p), sup.pid)
        node.table = OwnershipTable(p, node.segment.buf)
        node.marks_segment = Segment.create(sup.cfg.instance, REPLICATION, marks_bytes(), sup.pid)
        node.marks = ReplicationMarks(node.marks_segment.buf)
        if node.cfg.ack == "sync":
            node.bell = EventfdDoorbell.create()
        node.client = ControlClient(node.cfg.servers, node.cfg.node, node.replicas, node.open_timeout_s,
                                    credentials=node.cfg.credentials, log=sup.log)
        try:
            node.client.start()
            node.control = ControlPlane(sup, node.client, node.cfg.node)
            node.ruleset = node.control.ruleset = RulesetPlane(sup, node.client, node.cfg.node)
            node.ruleset.on_change = node.control.publish_applied
            n = node.control.join(node.open_timeout_s)
            spec, rs = node.ruleset.at_start(spec, rs)
        except (ControlUnavailable, ConfigError, nats.errors.Error, asyncio.TimeoutError, TimeoutError,
                OSError) as e:     # ConfigError: the credentials file changed since the config check
            why = f"{type(e).__name__}: {e}" if str(e) else \
                f"no NATS server answered within {node.open_timeout_s:g} s"
            raise node._fail(why) from None
        sup.log(f"risk-engine: cluster: node {node.cfg.node} joined the control plane at revision "
                f"{node.control.revision} ({n} value(s), {node.control.applied} changed this node)")
        sup.log(f"risk-engine: cluster: cluster.ack={node.cfg.ack}: "
                + ("each reply waits for its record in the stream" if node.cfg.ack == "sync" else
                   "replies go out before their records are published (docs/CLUSTER.md, Replication)"))
        return node, spec, rs

    def _event(self, ev: dict) -> None:
        kind = ev["ev"]
        if kind in self.counts:
            self.counts[kind] += len(ev.get("leases", ())) if kind == "renewed" else 1
        if kind == "acquired":
            self._taking[ev["p"]] = ev
        elif kind == "ready":
            self._say_timeline(ev)
        elif kind == "prepare_failed":
            self.sup.log(f"risk-engine: cluster: partition {ev['p']}: take-over failed, lease "
                         f"released: {ev.get('error')}")
        elif kind == "journal_unavailable":
            self.sup.log(f"risk-engine: cluster: journal unavailable: taking no partition, handing "
                         f"the {len(ev['held'])} held over to nodes whose journal works "
                         f"{ev['handover_ns'] / 1e9:g} s from now")
        elif kind == "journal_available":
            self.sup.log("risk-engine: cluster: journal available again: taking partitions")
        elif kind == "status":
            self.live_nodes = ev["live"]
        elif kind == "started":
            self._started.set()

    def _say_timeline(self, ready: dict) -> None:
        """One line per partition taken: when each step of its take-over ended, in ms after
        this node first saw the lease revision it took over from (docs/CLUSTER.md, "Failover
        time"); the anchor is printed on CLOCK_BOOTTIME, so a test on this machine can put
        a kill on the same axis."""
        p, acq = ready["p"], self._taking.pop(ready["p"], None)
        if acq is None or not acq.get("seen_ns"):
            return
        t0 = acq["seen_ns"]
        steps = {"cas_sent": acq["cas_ns"], "taken": acq["t_ns"],
                 **(self.replicator.timeline.pop(p, {}) if self.replicator else {}), "ready": ready["t_ns"]}
        parts = " ".join(f"{k}={(t - t0) / 1e6:.0f}" for k, t in steps.items() if t)
        self.sup.log(f"risk-engine: cluster: partition {p}: serving at revision {ready['rev']}; "
                     f"take-over ({'free' if acq.get('free') else 'expired'}) ms after revision "
                     f"{acq['prev_rev']} was first seen "
                     f"(seen_ns={t0}): {parts}")

    def start_leases(self) -> None:
        """Start the lease agent and wait until it has opened the lease bucket."""
        c = self.cfg
        fs, ruleset = self.sup.features.fs, (lambda: self.sup.rulesets.ruleset)
        state = PartitionState(fs, ruleset, c.partitions)

        def scratch():              # where snapshot objects are computed: as big as the tables
            return PartitionState(FeatureSet(fs.specs, fs.schema, load_lists=False), ruleset, c.partitions)
        self.jobs = TakeJobs(self.sup, state, self._give_up,      # taken rows written by poll(),
                             reading=lambda: self.replicator.reading)   # on this thread
        self.replicator = Replicator(self.sup.cfg, self.table, self.sup.log, self.open_timeout_s,
                                     state, scratch, self.jobs, marks=self.marks,
                                     wake=TailerWake(self.bell) if self.bell is not None else None)
        agent = LeaseAgent(c.servers, c.node, c.advertise, c.partitions, c.lease_ttl_s,
                           replicas=self.replicas, on_event=self._event, table=self.table,
                           open_timeout_s=self.open_timeout_s, prepare=self.replicator.prepare,
                           on_end=self.replicator.end, credentials=c.credentials,
                           journal_ok=self._journal_ok, log=self.sup.log)
        self.agent = AgentThread(agent, side=[self.replicator.run]).start()
        t = self.open_timeout_s + 5
        while not self._started.wait(0.1):
            t -= 0.1
            if self.agent.error is not None or t <= 0:
                e = self.agent.error
                raise self._fail(f"{type(e).__name__}: {e}" if e is not None and str(e) else
                                 f"the lease bucket was not usable within {self.open_timeout_s:g} s")
        self.start_map()
        self.sup.rulesets.route = self.ruleset.reload      # `risk-engine reload`, SIGHUP: every node
        self.sup.log(f"risk-engine: cluster: node {c.node} taking leases on {c.partitions} "
                     f"partitions (ttl {c.lease_ttl_s:g} s, share about "
                     f"{share(c.partitions, max(1, self.live_nodes))})")

    def _journal_ok(self) -> bool:
        """(The agent's thread.) False while a worker's journal is unavailable (a full or
        failing disk; the worker sets and clears its cell): the agent hands the partitions
        over and takes none (engine.cluster.drain)."""
        b = self.sup.block
        return b is None or not any(b.worker(w, "journal_unavailable")[0] for w in range(b.n_workers))

    def _give_up(self, partitions) -> None:
        """(The supervisor's thread.) The agent stops serving ``partitions`` and releases them;
        returns once none is served (engine.cluster.handover)."""
        done = threading.Event()
        try:
            self.agent.call_soon(self.agent.agent.give_up, partitions, done)
        except RuntimeError:            # the agent's loop has ended: it serves nothing
            return
        if not done.wait(30):
            self.sup.log(f"risk-engine: cluster: partitions {partitions}: the lease agent did not "
                         f"stop serving them within 30 s")

    def start_map(self) -> None:
        """Watch the lease bucket: every owner's address into the ownership segment, for the
        ingress's NOT_OWNER replies (ingress.ownercheck)."""
        try:
            self.map = PartitionMap(self.cfg.servers, on_change=self.table.set_owner,
                                    credentials=self.cfg.credentials, log=self.sup.log,
                                    timeout_s=self.open_timeout_s).start()
        except PartitionMapError as e:
            raise self._fail(f"partition map: {e}") from None

    def poll(self) -> None:
        self.control.drain()
        if self.jobs is not None:
            self.jobs.run_pending()
        self.ruleset.poll()
        if self.agent is not None and self.agent.error is not None and not self._reported_error:
            self._reported_error = True
            self.sup.log(f"risk-engine: cluster: lease agent stopped: {type(self.agent.error).__name__}: "
                         f"{self.agent.error}; this node serves no partition")

    def owned(self) -> dict[int, int]:
        return self.table.owned() if self.table is not None else {}

    def status(self) -> dict:
        ctl = self.control
        return {"node": self.cfg.node, "partitions": self.cfg.partitions,
                "owned": sorted(self.owned()), "live_nodes": self.live_nodes,
                "agent_running": self.agent is not None and self.agent.error is None,
                "control": {"revision": ctl.revision, "applied": ctl.applied, "errors": ctl.errors,
                            "lag_ms": ctl.last_lag_ms} if ctl is not None else None,
                "ruleset": self.ruleset.record() if self.ruleset is not None else None}

    def close(self) -> None:
        """Stop serving and release the leases (a lease that cannot be released lapses after
        its TTL), close NATS, remove the segment."""
        if self.map is not None:
            self.map.close()
            self.map = None                 # its callback holds the table's views
        if self.agent is not None:
            self.agent.stop(5.0)
        if self.client is not None:
            self.client.close()
        if self.table is not None:
            for p in range(self.table.partitions):
                self.table.clear(p)
        if self.segment is not None:
            self.segment.unlink()
            self.table = None               # the views go first, so the mapping can close
            self.segment.close()
            self.segment = None
        if self.marks_segment is not None:
            self.marks_segment.unlink()
            self.marks = None
            self.marks_segment.close()
            self.marks_segment = None
        if self.bell is not None:           # after the agent's loop (its reader) stopped
            self.bell.close()
            self.bell = None

    def child_fds(self) -> tuple[int, ...]:
        """The descriptors every child inherits: the tailer's eventfd (ack: sync)."""
        return () if self.bell is None else (self.bell.fileno(),)

