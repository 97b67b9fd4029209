"""`risk-engine serve`: start the engine in the foreground."""
import os
import signal
import sys
import traceback
from dataclasses import replace

EXIT_SUPERVISOR_FAILED = 70        # EX_SOFTWARE: not 0, so systemd's Restart=on-failure restarts
HELP = "start the engine (supervisor, ingress, workers) in the foreground"


def add_arguments(p):
    p.add_argument("--config", help="config file (default: the bundled engine/default.yaml)")
    p.add_argument("--bind", help="front-door address, e.g. tcp://127.0.0.1:5555 (overrides ingress.bind)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus endpoint (overrides metrics.bind); 'off' disables")
    p.add_argument("--rules", nargs="+", metavar="F", help="rule files (override rules.files)")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (overrides workers.count)")
    p.add_argument("--instance", help="instance name: shared-memory prefix and run dir (overrides instance)")
    p.add_argument("--ebpf", action="store_true", help="also run the eBPF socket-telemetry sidecar")
    p.add_argument("--skip-corrupt-journal-records", action="store_true",
                   help="recovery skips corrupt journal records (each logged and counted in "
                        "risk_journal_corrupt_records_total) and keeps every later one, instead of "
                        "refusing to start (sets journal.skip_corrupt_records; docs/DURABILITY.md)")


def serve_config(args):
    """The config ``serve`` runs with: the file read with --instance in place of its instance
    (paths are made from it when the file is read), then the other flags."""
    from shm.runtime.config import load_config   # lazy: yaml (cli.py imports every command module)
    return apply_overrides(load_config(args.config, instance=args.instance or None), args)


def apply_overrides(cfg, args):
    """CLI flags but --instance (serve_config) override the file; the result is validated
    like the file itself."""
    from shm.runtime.config import ConfigError, check_binds   # lazy: yaml (cli.py imports every command)
    if args.bind:
        cfg = replace(cfg, ingress=replace(cfg.ingress, bind=args.bind))
    if args.metrics:
        if args.metrics == "off":
            cfg = replace(cfg, metrics=replace(cfg.metrics, enabled=False))
        else:
            cfg = replace(cfg, metrics=replace(cfg.metrics, bind=args.metrics, enabled=True))
    if args.rules:
        cfg = replace(cfg, rules=replace(cfg.rules, files=tuple(os.path.abspath(f) for f in args.rules)))
    if args.workers is not None:
        if not 1 <= args.workers <= 64:
            raise ConfigError("--workers", f"must be in [1, 64], got {args.workers}")
        cfg = replace(cfg, workers=replace(cfg.workers, count=args.workers, cpus=cfg.workers.cpus))
    if getattr(args, "skip_corrupt_journal_records", False):
        cfg = replace(cfg, durability=replace(cfg.durability, skip_corrupt_journal_records=True))
    check_binds(cfg)
    return cfg


def run(args) -> int:
    from engine.stopsignals import StopRequested, StopSignals   # lazy: cli.py imports every command module
    stops = StopSignals()           # first of all: a stop at any point of start-up is clean
    try:
        return _run(args, stops)
    except StopRequested as e:      # before the supervisor made anything
        print(f"risk-engine: stopped ({e} during start-up)", flush=True)
        return 0


def serve(cfg, stops, ebpf: bool = False) -> int:
    """Start the engine (engine.supervisor), announce it, run it; the exit code."""
    # lazy: numba, numpy, zmq for serve only (cli.py imports every command module)
    from shm.runtime import procname
    from engine.sdnotify import Notifier
    from engine.stopsignals import StopRequested
    from engine.preflight import remove_created_dirs
    from engine.supervisor import Supervisor
    procname.set_role("supervisor")
    sup = Supervisor(cfg, log=lambda line: print(line, flush=True), ebpf=ebpf, stops=stops,
                     notify=Notifier())        # flushed: under systemd stdout is a pipe
    try:
        sup.start()
        stops.serving()
    except StopRequested as e:
        stops.hold()
        return sup.shutdown(e.sig)
    except BaseException:
        stops.hold()
        sup.cleanup()
        remove_created_dirs(sup.created_dirs)   # a failed start leaves no empty state dirs
        raise
    line = (f"serving {cfg.ingress.bind} with {len(sup.placements)} worker(s), ruleset "
            f"{sup.rulesets.specs[sup.rulesets.generation]['label']}; metrics "
            f"{'http://' + cfg.metrics.bind + '/metrics' if cfg.metrics.enabled else 'off'}; "
            f"instance {cfg.instance} (pid {sup.pid}); started in {sup.started_s:.1f} s")
    print(f"risk-engine: {line}", flush=True)
    sup.block.view("supervisor.serving")[0] = 1     # after the line: no reply precedes it
    sup.notify.ready(line)
    try:
        return sup.run()
    except Exception as e:           # a defect in the loop: stop in order (the ingress answers
        stops.hold()                 # what it admitted, segments go) instead of dying and
        traceback.print_exc()        # taking the children with it (PR_SET_PDEATHSIG)
        sup.shutdown(signal.SIGTERM, failure=f"supervisor failed: {type(e).__name__}: {e}")
        return EXIT_SUPERVISOR_FAILED


def _run(args, stops) -> int:
    from shm.runtime.config import ConfigError   # lazy: yaml, numba (cli.py imports every command)
    from engine.supervisor import StartupError
    from shm.runtime.topology import TopologyError
    try:
        cfg = serve_config(args)
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return 2
    from shm.journal_format import JournalError   # lazy: cli.py imports every command module
    from engine.recovery import RecoveryError
    try:
        return serve(cfg, stops, ebpf=args.ebpf)
    except (StartupError, TopologyError, ConfigError, RecoveryError, JournalError, ValueError,
            OSError) as e:
        # ValueError covers list files and feature specs (shm.features: key path + value)
        print(f"risk-engine: cannot start: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from rules import RulesetError   # lazy: cli.py imports every command module
        if isinstance(e, RulesetError):
            print(f"risk-engine: ruleset refused:\n{e}", file=sys.stderr)
            return 2
        raise
