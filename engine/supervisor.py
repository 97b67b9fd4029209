"""The supervisor, the engine's process lifecycle: owns the instance's shared memory, starts
and restarts the ingress and the workers, serves metrics and the admin plane, and shuts
everything down in order. Its other jobs are parts it composes: engine.preflight (checks
before anything is created), engine.recovery_state.StateRecovery (feature state at start and
after a worker died), engine.reload.Rulesets (generations and reloads),
engine.snapshot_coordinator (snapshots and the workers' pause), engine.standby (the spare),
engine.status_file (its processes and status.json).

Start-up (start, then serve): the children compile and warm their kernels; the ingress reads
no request before supervisor.serving, set after every process is ready and "serving" is
printed (engine.readiness). Signals are handled from before the first segment exists
(engine.stopsignals): a stop during start-up stops what started and removes every segment.

Shutdown (SIGINT/SIGTERM): stop=1 (the ingress reads no more requests and answers every one
in flight), wait for the ingress to exit, stop=2 (workers exit between batches), unlink every
segment, print one "stopped" line, exit 0. A child that dies is restarted; a worker's
unreleased requests stay in its ring and are evaluated by its successor (or answered by the
ingress at their deadline, flagged WORKER_LOST).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

from bpf.spawn import SidecarUnavailable, port_of_bind, start_sidecar
from shm.runtime import rundir
from shm.runtime.config import Config
from shm.control import STARTUP_PHASES, Block, BlockLayout
from engine.admin import AdminServer
from engine.cluster.node_hooks import ClusterCollector
from engine.autoblock import autoblock_fds, capture_peers
from engine.enforcement import start_enforcement
from engine.exporter import EngineCollector, Exporter
from engine.memplan import check_memory
from engine.preflight import StartupError, check_ports, check_state_dirs, claim_instance
from engine.readiness import Progress, child_phases, wait_ready
from engine.recovery_state import StateRecovery
from engine.reload import Rulesets, startup_ruleset
from shm.rings import EngineRings
from shm.runtime.securedir import UnsafePathError, ensure_private_dir, write_private_file
from engine.snapshot_coordinator import SnapshotCoordinator
from engine.sdnotify import Notifier
from engine.standby import STOP_GRACE_S, StandbyPool
from engine.status_file import StatusFile
from engine.stopsignals import StopSignals
from shm.runtime.topology import Topology, plan_workers, read_topology
from shm.doorbell import EventfdDoorbell
from shm.featurestore import FeatureStore
from shm.segment import Segment, unlink_owned
from shm import names

STARTING_GRACE_S = 2         # a child stopped before it was ready: it holds nothing to close


class Supervisor:
    def __init__(self, cfg: Config, topology: Topology | None = None, log=print, ebpf: bool = False,
                 stops: StopSignals | None = None, notify: Notifier | None = None):
        self.cfg = cfg
        self.want_ebpf = ebpf
        self.sidecar = None
        self.enforcement = None             # engine.enforcement: the kernel's copy of the lists
        self.cluster = None                 # engine.cluster.node.ClusterNode (cluster: section)
        self.log = log
        self.pid = os.getpid()
        self.run_dir = rundir.run_dir_for(cfg.instance)
        self.run_dir_checked = False        # made or checked private by _check_dirs
        self.created_dirs: list[str] = []   # state directories this start made (preflight)
        self.admin_log = None               # engine.admin_log.AdminLog, opened by the first change
        self.topology = topology or read_topology()
        self.children: dict[str, subprocess.Popen] = {}
        self.stops = stops                  # engine.stopsignals (serve() installs it first)
        self.notify = notify or Notifier({})
        self.progress: Progress | None = None   # start-up's progress lines
        self.placements: list = []          # shm.runtime.topology.plan_workers: one per worker
        self.rings: list[EngineRings] = []
        self.exporter = None
        self.admin = None
        self.collector = None
        self.features = None
        self.control: Segment | None = None
        self.block: Block | None = None
        self.doorbell: EventfdDoorbell | None = None
        self.created_s = time.monotonic()   # the first snapshot is due snapshot.interval_s after it
        self.restarting: dict[int, tuple[int, int, int]] = {}   # worker -> (noticed, rebuilt, spawned) ns
        self.recovery: StateRecovery | None = None     # made by start() with the feature tables
        # the parts below need the control block: made by start() once it exists
        self.rulesets: Rulesets | None = None              # generations and the reload in flight
        self.snapshots: SnapshotCoordinator | None = None  # snapshots and the workers' pause
        self.standbys: StandbyPool | None = None           # the spare worker (workers.standby)
        self.started_ns = 0                 # CLOCK_MONOTONIC (arrival_ns' clock) when this run began
        self.status_file = StatusFile()     # status.json, rewritten when it changes
        self.started_s = 0.0                # how long start() took

    # --- start --------------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.cfg
        check_ports(cfg)                    # before anything exists: a busy port leaves nothing
        self.progress = Progress(self.log, self.notify)
        self._check_dirs()
        claim_instance(cfg, self.pid, self.log)
        self._start_exporter()                  # /healthz from now on, /ready once serving
        for f in [*self.run_dir.glob("gen-*.json"), *self.run_dir.glob("rules-*.yaml")]:
            f.unlink()
        self.placements = plan_workers(self.topology, set(os.sched_getaffinity(0)), cfg.workers.count,
                                       cfg.workers.cpus, cfg.cluster.partitions if cfg.cluster else 0)
        n = len(self.placements)
        check_memory(cfg, n)
        self.features = FeatureStore(cfg, self.pid, create=True)
        self.progress.step(f"compiling the rules of {len(cfg.rules.files)} file(s)")
        spec, rs = startup_ruleset(cfg, self.features.fs, self.log)   # refuse a bad ruleset
        self.log(f"risk-engine: ruleset {rs.label}: {rs.n_rules} rules, kernel compiled or "
                 f"loaded in {rs.import_s:.1f} s")
        self.recovery = StateRecovery(cfg, self.features, self.log)
        if not self.features.empty:
            self.log("risk-engine: feature tables in shared memory:\n" + self.features.fs.memory_report())
            self.progress.step("recovering feature state")
            self.recovery.at_start(rs)          # before any worker starts
        if cfg.cluster is not None:             # the cluster's control state, then serve
            from engine.cluster.node import ClusterNode     # lazy: nats-py on cluster nodes only
            _, spec, rs = ClusterNode.join(self, spec, rs)  # the bucket's ruleset, if any
        self.control = Segment.create(cfg.instance, names.CONTROL, BlockLayout(n).nbytes, self.pid)
        self.block = Block(self.control.buf, n, create=True)
        self.recovery.count_into(self.block)
        self.doorbell = EventfdDoorbell.create()
        for w in range(n):
            self.rings.append(EngineRings.create(cfg, self.pid, w, self.doorbell))
        self.rulesets = Rulesets(cfg, self.run_dir, self.block, self.features, self.log,
                                 before_publish=self._fold_counters, after_reload=self._after_reload)
        self.snapshots = SnapshotCoordinator(cfg, self.block, self.rings, self.features, self.created_s,
                                             exited=self._worker_exited, log=self.log)
        self.standbys = StandbyPool(cfg.workers.standby, self.block,
                                    lambda args, **kw: self._spawn(None, args, **kw), self.log)
        # lists final (recovered), no admin plane yet, front door not bound: attach now
        self.enforcement = start_enforcement(cfg, self.features, self.log)
        plan = {"instance": cfg.instance, "owner_pid": self.pid, "eventfd": self.doorbell.fileno(),
                "replication_eventfd": (*self.cluster.child_fds(), -1)[0] if self.cluster else -1,
                "autoblock_fds": autoblock_fds(self.enforcement),
                "control": self.control.name, "ingress_cpu": cfg.workers.ingress_cpu,
                "workers": [{"cpu": p.cpu, "node": p.node,
                             "rings": self.rings[i].names()} for i, p in enumerate(self.placements)]}
        rundir.write_config(self.run_dir, cfg)
        rundir.write_json(self.run_dir, "plan.json", plan)
        self.started_ns = time.monotonic_ns()   # records arriving after it are this run's (explain)
        self.rulesets.publish(spec, rs)
        write_private_file(self.run_dir / "supervisor.pid", str(self.pid).encode())
        capture_peers(self)                 # block_source rules: the ingress reads senders
        spawned_s = time.monotonic()
        for w in range(n):
            self._spawn_worker(w)
        self._spawn_ingress()
        if cfg.workers.standby:
            with self.stops.spawning() if self.stops else nullcontext():   # until it is known
                self.standbys.start()
        self.progress.step("")
        self.progress.children = lambda: child_phases(self, spawned_s)
        wait_ready(self)
        try:
            self.admin = AdminServer(self)
        except Exception as e:
            raise StartupError(f"admin.bind={cfg.admin.bind!r}: {e}") from None
        if self.cluster is not None:
            self.cluster.start_leases()         # ready to serve: take partitions
        if self.want_ebpf:
            self._start_sidecar()
        self.status_file.update(self)
        self.started_s = self.progress.close()

    def _start_exporter(self) -> None:
        self.collector = (EngineCollector if self.cfg.cluster is None else ClusterCollector)(self)
        if self.cfg.metrics.enabled:
            try:
                self.exporter = Exporter(self, self.collector)
            except OSError as e:
                raise StartupError(f"metrics.bind={self.cfg.metrics.bind!r}: {e.strerror}") from None

    def _check_dirs(self) -> None:
        """The run directory (created 0700, or refused: shm.runtime.rundir) and the state
        directories (engine.preflight)."""
        try:
            self.run_dir = rundir.make_run_dir(self.cfg.instance)
        except UnsafePathError as e:
            raise StartupError(f"unsafe directory: {e}") from None
        self.run_dir_checked = True
        check_state_dirs(self.cfg, self.log, self.created_dirs)

    def snapshot(self, timeout_s: float = 5.0, copied=None) -> str:
        """A snapshot of the feature tables now (engine.snapshot_coordinator); its path.
        ``copied()`` runs once the tables are copied, before the file is written."""
        return self.snapshots.snapshot(self.rulesets.generation, timeout_s, copied=copied)

    def admin_log_path(self) -> str | None:
        """admin.log in the journal directory (None when the journal is off)."""
        d = self.cfg.durability
        if not d.journal_enabled:
            return None
        path = ensure_private_dir(d.journal_dir, "journal.dir")
        return os.path.join(path, "admin.log")

    def _start_sidecar(self) -> None:
        """`serve --ebpf`: the eBPF sidecar as a child; if it cannot run here, say why in one
        line and keep serving (risk_ebpf_enabled stays 0)."""
        try:
            self.sidecar = start_sidecar(port_of_bind(self.cfg.ingress.bind),
                                         metrics=self.cfg.metrics.ebpf_bind)
            self.log(f"risk-engine: eBPF sidecar pid {self.sidecar.pid} on {self.sidecar.url}")
        except SidecarUnavailable as e:
            self.log(f"risk-engine: {e}; serving without eBPF telemetry")

    @property
    def ebpf_enabled(self) -> int:
        return int(self.sidecar is not None and self.sidecar.alive())

    def _spawn(self, role: str | None, args: list[str], **kw) -> subprocess.Popen:
        with self.stops.spawning() if self.stops else nullcontext():   # engine.stopsignals
            p = subprocess.Popen([sys.executable, "-m", *args, "--run-dir", str(self.run_dir)],
                                 pass_fds=(self.doorbell.fileno(), *kw.pop("fds", ()),
                                           *(self.cluster.child_fds() if self.cluster else ())), **kw)
            if role is not None:
                self.children[role] = p
        return p

    def _after_reload(self) -> None:
        """A standby's kernel is the old generation's: replace it."""
        capture_peers(self)
        if self.standbys.process is not None:
            self.standbys.retire()

    def _fold_counters(self, generation: int) -> None:
        """Before a reload publishes: generation's counter row is about to be reused."""
        if self.collector is not None:
            self.collector.fold_generation(generation)

    def _spawn_worker(self, w: int) -> None:
        p = self.standbys.take(w)
        if p is not None:
            self.children[f"worker {w}"] = p
        else:
            p = self._spawn(f"worker {w}", ["engine.worker", "--index", str(w)])
        self.block.view("supervisor.worker_pid")[w] = p.pid
        self.block.view("supervisor.worker_epoch")[w] += 1
        self.block.view("supervisor.worker_alive")[w] = 1

    def _spawn_ingress(self) -> None:
        fds = autoblock_fds(self.enforcement)           # -1, -1: no enforcement
        p = self._spawn("ingress", ["ingress.router"], fds=fds * (fds[0] >= 0))
        self.block.view("supervisor.ingress_pid")[0] = p.pid
        self.block.view("supervisor.ingress_alive")[0] = 1

    # --- run ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Watch children, restart the dead, handle signals. Returns the exit code."""
        while True:
            while (sig := self.stops.take()) is not None:
                if sig == signal.SIGHUP:
                    self.rulesets.request_from_file()
                else:
                    return self.shutdown(sig)
            self.notify.watchdog()
            self._reap()
            self._note_restarted()
            self.standbys.keep()
            self.rulesets.poll()
            self.status_file.update(self)            # after a reload or a standby change
            self.admin.poll(20)
            if self.cluster is not None:
                self.cluster.poll()                  # control changes from the cluster
            self.snapshots.tick(self.rulesets.generation)

    def _worker_exited(self, w: int) -> bool:
        """Worker w's process has ended; Popen keeps the status, so _reap still sees it."""
        p = self.children.get(f"worker {w}")
        return p is not None and p.poll() is not None

    def _reap(self) -> None:
        for role, p in list(self.children.items()):
            if p.poll() is None:
                continue
            self.log(f"risk-engine: {role} (pid {p.pid}) exited with code {p.returncode}; restarting")
            if role == "ingress":
                self.block.view("supervisor.ingress_alive")[0] = 0
                self.block.view("supervisor.ingress_restarts")[0] += 1
                self._spawn_ingress()
            else:
                w = int(role.split()[1])
                noticed = time.monotonic_ns()
                self.block.view("supervisor.worker_alive")[w] = 0
                self.block.view("supervisor.worker_restarts")[0] += 1
                try:
                    self.recovery.after_crash(self.snapshots.paused_workers, self.rulesets.ruleset)
                except Exception as e:         # keep serving; say loudly what is not exact
                    self.log(f"risk-engine: feature rebuild after worker {w} died failed: {e}")
                rebuilt = time.monotonic_ns()
                self._spawn_worker(w)
                self.restarting[w] = (noticed, rebuilt, time.monotonic_ns())
            self.status_file.update(self)

    def _note_restarted(self) -> None:
        """A restarted worker serves once its loop beats (heartbeat_ns, CLOCK_MONOTONIC in every
        process): log how long it was out, from its death being noticed (the reap runs every
        20 ms), and keep that as risk_worker_restart_seconds."""
        for w, (noticed, rebuilt, spawned) in list(self.restarting.items()):
            beat = int(self.block.worker(w, "heartbeat_ns")[0])
            if beat <= spawned:
                continue
            del self.restarting[w]
            self.block.view("supervisor.worker_restart_ns")[0] = beat - noticed
            self.log(f"risk-engine: worker {w} serving again {(beat - noticed) / 1e6:.0f} ms after "
                     f"its death was noticed (feature rebuild {(rebuilt - noticed) / 1e6:.0f} ms, "
                     f"process start {(beat - spawned) / 1e6:.0f} ms)")

    # --- stop ---------------------------------------------------------------------------------

    def shutdown(self, sig: int, failure: str | None = None) -> int:
        """Stop in order (module doc), also part-way through start-up; one "stopped" line,
        naming ``failure`` (what broke the loop) instead of the signal when given."""
        self.notify.stopping()
        if self.progress is not None:
            self.progress.close()
        starting = self.block is None or not self.block.view("supervisor.serving")[0]
        if self.standbys is not None:
            self.standbys.retire()
        if self.block is not None:
            stop = self.block.view("supervisor.stop")
            stop[0] = 1
            ing = self.children.get("ingress")
            if ing is not None:
                self._stop_child(ing, self.cfg.ingress.default_deadline_ms / 1000 + STOP_GRACE_S,
                                 self.block.view("ingress.phase"))
            stop[0] = 2
            for r in self.rings:
                r.wake_worker()
            for role, p in self.children.items():
                if role != "ingress":
                    self._stop_child(p, STOP_GRACE_S, self.block.worker(int(role.split()[1]), "phase"))
        self.cleanup()
        why = failure or f"{signal.Signals(sig).name}{' during start-up' if starting else ''}"
        self.log(f"risk-engine: stopped ({why}); "
                 f"instance {self.cfg.instance} (pid {self.pid}): shared memory and run directory removed")
        return 0

    @staticmethod
    def _stop_child(p: subprocess.Popen, grace_s: float, phase) -> None:
        """Wait for a child to exit; one not ready yet is compiling or loading and holds
        nothing that needs closing: it gets STARTING_GRACE_S, then SIGKILL."""
        if phase[0] != STARTUP_PHASES.index("ready"):
            grace_s = STARTING_GRACE_S
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def cleanup(self) -> None:
        """Release everything this supervisor created; safe after a partial start."""
        if self.progress is not None:
            self.progress.close()
        if self.rulesets is not None:
            self.rulesets.kill()
        for p in self.children.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.standbys is not None:
            self.standbys.kill()
        for res in (self.sidecar, self.exporter, self.admin, self.enforcement, self.cluster):
            if res is not None:
                (res.stop if res is self.sidecar else res.close)()
        for r in self.rings:
            r.unlink()
        if self.features is not None:
            self.features.unlink()
            self.features.close()
            self.features = None
        self.block = None
        if self.control is not None:
            self.control.unlink()
            self.control.close()
        unlink_owned(self.cfg.instance, self.pid)
        if not self.run_dir_checked:
            return                      # refused or never made: not ours to empty
        if (self.run_dir / "supervisor.pid").exists() and \
                (self.run_dir / "supervisor.pid").read_text() != str(self.pid):
            return                      # another live supervisor owns the run dir
        for f in self.run_dir.glob("*"):
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)    # nothing of ours; the dir is 0700 and ours
            else:
                f.unlink()
        try:
            self.run_dir.rmdir()
        except OSError:
            pass
