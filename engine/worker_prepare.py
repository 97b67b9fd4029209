"""What a worker loads before it serves (Prepared: a standby worker holds one ready), and the
rule generations it loads: at start, or on a background thread while it serves
(GenerationLoader)."""
from __future__ import annotations

import threading

from rules import compile_ruleset
from shm.control import set_phase
from shm.featurestore import FeatureStore
from shm.runtime import rundir


class GenerationMismatch(RuntimeError):
    """What a worker compiled for a generation is not what the supervisor published."""
    code = "GENERATION_MISMATCH"

    def __init__(self, generation: int, why: str):
        super().__init__(f"{self.code}: generation {generation}: {why}; not served")


def load_generation(run_dir: str, generation: int, schema, features=None):
    """Compile (from the kernel cache) generation ``generation``'s rules against the
    engine's shared feature tables, and warm the kernel up. The rules are the bytes the
    supervisor compiled (rundir.read_rules_copy), never the files as they are now (edited
    since, maybe); the kernel must be the published one. Raises GenerationMismatch."""
    spec = rundir.read_generation(run_dir, generation)
    try:
        texts = [rundir.read_rules_copy(run_dir, h).decode() for h in spec["sha256"]]
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise GenerationMismatch(generation, f"the rule files' compiled bytes are unusable: "
                                             f"{type(e).__name__}: {e}") from None
    rs = compile_ruleset(spec["files"], schema, thresholds=tuple(spec["thresholds"]),
                         on_error=spec["on_error"], features=features, texts=texts)
    if rs.source_hash != spec["source_hash"] or list(rs.rule_ids) != spec["rule_ids"]:
        raise GenerationMismatch(generation, f"compiled kernel {rs.source_hash} rules "
                                             f"{','.join(rs.rule_ids)[:200]}, published kernel "
                                             f"{spec['source_hash']} rules "
                                             f"{','.join(spec['rule_ids'])[:200]}")
    rs.warm_up()
    return rs


class GenerationLoader:
    """Loads a new generation on a background thread; the loop swaps it in between batches."""

    def __init__(self, run_dir: str, schema, features=None):
        self.run_dir, self.schema, self.features = run_dir, schema, features
        self.thread = None
        self.generation = 0
        self.result = None

    def start(self, generation: int) -> None:
        self.generation, self.result = generation, None
        self.thread = threading.Thread(target=self._load, daemon=True, name="reload")
        self.thread.start()

    def _load(self) -> None:
        try:
            self.result = load_generation(self.run_dir, self.generation, self.schema, self.features)
        except Exception as e:            # reported by the loop, which keeps the old ruleset
            self.result = e

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def take(self):
        """(generation, ruleset-or-exception) once the load finished, else None."""
        if self.thread is None or self.thread.is_alive():
            return None
        self.thread = None
        return self.generation, self.result


class Prepared:
    """What a worker loads before it needs its index: the config, the control block, the
    shared feature tables (their pages mapped: the first batches would otherwise fault them
    in, 73 MiB with the default config) and the active generation's kernel (from the kernel
    cache, warmed up: numba's first load costs about 0.2 s of it). A standby worker holds
    one ready. ``phase``: the control-block view where this process reports its start-up
    phase (shm.control.STARTUP_PHASES)."""

    def __init__(self, run_dir: str, phase: str):
        self.plan = rundir.read_plan(run_dir)
        self.cfg = rundir.read_config(run_dir)
        self.block, self.block_seg = rundir.attach_control(run_dir, self.cfg)
        set_phase(self.block.view(phase), "compiling")
        self.store = FeatureStore(self.cfg, self.plan["owner_pid"], create=False)
        self.generation = int(self.block.view("supervisor.generation")[0])
        self.ruleset = load_generation(run_dir, self.generation, self.cfg.schema, self.store.fs)
        set_phase(self.block.view(phase), "warming")
        self.store.prefault()
