"""The engine's configuration as values: frozen dataclasses holding every default, and
``ConfigError``. Reading, validating and writing a config file is shm.runtime.config's job."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from shm.schema import Schema


class ConfigError(ValueError):
    """Invalid configuration. ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True)
class CurveConfig:
    enabled: bool = False
    server_secret_file: str = ""        # zmq.auth key file holding the server's secret key
    authorized_keys_dir: str = ""       # directory of allowed client public key files


@dataclass(frozen=True)
class IngressConfig:
    bind: str = "tcp://127.0.0.1:5555"
    max_frame_bytes: int = 1 << 20
    max_batch: int = 4096
    default_deadline_ms: int = 50
    # a request of n events without a deadline gets default_deadline_ms plus this per event
    # after the first: a 4096-event batch takes a worker tens of ms (docs/RELIABILITY.md)
    default_deadline_per_event_us: int = 50
    on_timeout: str = "block"           # fail-closed by default: allow | block
    on_overload: str = "error"          # error | allow | review | block
    dedup_window_s: int = 60
    dedup_max_entries: int = 1 << 18    # decided requests kept (fixed memory, allocated at start)
    dedup_max_bytes: int = 32 << 20     # their response slots, 64 B per event
    max_inflight: int = 4096            # requests in flight; more get OVERLOADED at once
    max_inflight_per_peer: int = 0      # one connection's share of it; 0: max_inflight / 4
    max_connections: int = 10_000       # over this the idlest connections are closed
    spin_us: int = 1000                 # poll socket and decisions this long (while it pays)
    curve: CurveConfig = CurveConfig()
    compiled_loop: bool = True          # fast-path requests received, admitted and answered in
                                        # compiled code calling libzmq (ingress.compiledloop)


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    bind: str = "127.0.0.1:9108"
    ebpf_bind: str = "127.0.0.1:9109"  # the eBPF sidecar's own endpoint (serve --ebpf)


@dataclass(frozen=True)
class AdminConfig:
    bind: str = "ipc://{run}/admin.sock"    # {run}, {instance}: replaced when the config is read
    curve: CurveConfig = CurveConfig()


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 0                      # 0: one worker per allowed CPU
    cpus: tuple[int, ...] = ()          # empty: the allowed CPUs, in order
    ingress_cpu: int = -1               # -1: not pinned
    spin_us: int = 1000                 # poll an empty request ring this long (while it pays)
    standby: bool = True                # keep a warmed-up spare worker process for restarts


@dataclass(frozen=True)
class RingsConfig:
    capacity: int = 4096                # slots, power of two


@dataclass(frozen=True)
class RulesConfig:
    files: tuple[str, ...] = ()
    thresholds: tuple[tuple[str, float], ...] = ()   # (action, score) pairs, e.g. review: 50
    on_error: str = "skip"              # skip (rule not fired) | fire
    watch: bool = False


@dataclass(frozen=True)
class JournalConfig:
    """A journal writer's settings (engine.journal.JournalWriter); their defaults are the
    journal: section's. ``fsync``: none | interval_ms | batch (loss windows: DURABILITY.md)."""
    segment_bytes: int = 16 << 20
    fsync: str = "interval_ms"
    interval_ms: int = 10
    max_files: int = 0          # 0: unlimited; else keep at most this many segments per writer
    max_age_s: int = 0          # 0: unlimited; else delete segments not written for this long

    def __post_init__(self):
        # journal_format compiles with numba: loaded only when a journal is configured
        from shm.journal_format import FSYNC_POLICIES, HEADER_SIZE
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"journal.fsync: must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        if not (HEADER_SIZE + 64 <= self.segment_bytes <= 1 << 40):
            raise ValueError(f"journal.segment_bytes: must be in [{HEADER_SIZE + 64}, 2**40], got {self.segment_bytes}")
        for k in ("interval_ms", "max_files", "max_age_s"):
            if getattr(self, k) < 0:
                raise ValueError(f"journal.{k}: must be >= 0, got {getattr(self, k)}")


@dataclass(frozen=True)
class DurabilityConfig:
    """journal: + snapshot: sections. The directories as read from a file may hold {state}
    and {instance}; shm.runtime.config replaces both when it reads the file, so a Config holds
    final paths."""
    journal_enabled: bool = True
    journal_dir: str = "{state}/{instance}/journal"
    fsync: str = JournalConfig.fsync
    interval_ms: int = JournalConfig.interval_ms
    segment_bytes: int = JournalConfig.segment_bytes
    max_files: int = JournalConfig.max_files
    max_age_s: int = JournalConfig.max_age_s
    snapshot_dir: str = "{state}/{instance}/snapshots"
    snapshot_interval_s: int = 60
    snapshot_keep: int = 3
    # recovery skips (and reports) corrupt journal records instead of stopping at them
    skip_corrupt_journal_records: bool = False
    # the action for events that cannot be journaled (full disk), flagged DEFAULT_JOURNAL
    on_journal_unavailable: str = "block"

    def journal_config(self) -> JournalConfig:
        return JournalConfig(segment_bytes=self.segment_bytes, fsync=self.fsync,
                             interval_ms=self.interval_ms, max_files=self.max_files,
                             max_age_s=self.max_age_s)


@dataclass(frozen=True)
class EnforceConfig:
    """enforce: kernel-side drops of listed sources (bpf/enforce.py, docs/EBPF.md)."""
    mode: str = "off"                   # off | xdp | tc
    interface: str = "auto"             # auto: the interface holding ingress.bind's address
    lists: tuple[str, ...] = ()         # ipv4/u32 lists (hash map), cidr4 and cidr6 lists (LPM tries)
    ports: tuple[int, ...] = ()         # destination TCP ports; empty: ingress.bind's port
    required: bool = False              # true: refuse to start when enforcement cannot attach


@dataclass(frozen=True)
class ClusterConfig:
    """cluster: partitions of the shard-key space owned by nodes through leases in NATS
    JetStream (shm/runtime/config_cluster.py, docs/CLUSTER.md)."""
    servers: tuple[str, ...] = ()       # nats://HOST:PORT of every NATS server
    partitions: int = 64                # the same in every node's config
    node: str = ""                      # this node's name: unique in the cluster
    advertise: str = ""                 # the tcp:// endpoint clients reach this node's ingress at
    ack: str = "sync"                   # sync | async: reply after or before replication
    lease_ttl_s: float = 2.0            # a lease not renewed for this long may be taken
    credentials: str = ""               # absolute path of the NATS credentials file ("" none)


@dataclass(frozen=True)
class Config:
    path: str
    ingress: IngressConfig
    metrics: MetricsConfig
    admin: AdminConfig
    workers: WorkersConfig
    rings: RingsConfig
    schema: Schema
    rules: RulesConfig
    durability: DurabilityConfig = DurabilityConfig()
    features: Mapping[str, Any] = field(default_factory=dict)   # validated by the features layer
    lists: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    instance: str = "re"                # shared-memory segment prefix; see shm.segment
    enforce: EnforceConfig = EnforceConfig()
    cluster: ClusterConfig | None = None    # None: a single engine, no cluster: section
