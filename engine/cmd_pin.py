"""`risk-engine pin`: pin the processes of a running engine to CPUs (every thread of each).

The processes come from the instance's status file (kept current by the supervisor: workers,
the ingress, the standby), or, with --pid-file, from a supervisor pid and its children's
titles. scripts/pin_workers.sh is a thin wrapper around this command.
"""
import argparse
import os
import sys
from pathlib import Path

HELP = "pin a running engine's workers (and optionally its ingress) to CPUs"

EXIT_BAD_ARGS = 2          # a CPU that is not a number or not allowed; nothing was changed
EXIT_NO_ENGINE = 2         # no running engine / no worker found (as scripts/pin_workers.sh did)
EXIT_GONE = 1              # a process to pin ended meanwhile (a restart): run the command again


def _cpu(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"cpu={text}: not a CPU number")
    return int(text)


def add_arguments(p):
    p.epilog = ("Worker i is pinned to the i-th CPU listed (reused round-robin if the list is "
                "shorter); --ingress pins the ingress too. A CPU outside the allowed set (this "
                "process's affinity, cgroup/cpuset aware) is refused before anything changes. "
                "Prints the resulting affinity of every engine process. A worker the supervisor "
                "restarts later pins itself to its configured CPU again (workers.cpus). "
                "Exit codes: 0 done; 1 a process ended while being pinned (run it again); "
                "2 bad CPU, no running engine or no worker found.")
    p.add_argument("--instance", default="re", help="instance (default: re)")
    p.add_argument("--pid-file", metavar="F",
                   help="find the engine from a supervisor pid file instead of its run directory")
    p.add_argument("--ingress", type=_cpu, metavar="CPU", help="also pin the ingress process to CPU")
    p.add_argument("--dry-run", action="store_true", help="print what would be pinned; change nothing")
    p.add_argument("cpus", nargs="+", type=_cpu, metavar="CPU", help="CPUs for worker 0, 1, ...")


class PinError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def processes_from_status(instance: str) -> dict[str, int]:
    """role -> pid of the running instance, from its status file."""
    from shm.runtime import rundir   # lazy: cli.py imports every command module
    for d, _pid in rundir.live_instances():
        if d.name == instance:
            try:
                return {p["role"]: int(p["pid"]) for p in rundir.read_json(d, "status.json")["processes"]}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise PinError(EXIT_NO_ENGINE, f"instance={instance}: status file unreadable: {e}") from None
    raise PinError(EXIT_NO_ENGINE, f"no running engine with instance={instance}")


def processes_from_pid_file(path: str) -> dict[str, int]:
    """role -> pid from a supervisor pid file and its children's process titles."""
    from shm.runtime.rundir import is_supervisor   # lazy: cli.py imports every command module
    try:
        sup = int(Path(path).read_text().strip())
    except (OSError, ValueError) as e:
        raise PinError(EXIT_NO_ENGINE, f"pid_file={path}: cannot read a pid: {e}") from None
    if not is_supervisor(sup):
        raise PinError(EXIT_NO_ENGINE, f"supervisor pid={sup} (from {path}) is not running")
    out = {"supervisor": sup}
    children = []
    for task in Path(f"/proc/{sup}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    for child in children:
        try:
            title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("risk-engine: worker standby"):
            out["standby"] = child
        elif title.startswith("risk-engine: worker "):
            out["worker " + title.split()[2]] = child
        elif title.startswith("risk-engine: ingress"):
            out["ingress"] = child
    return out


def plan(procs: dict[str, int], cpus: list[int], ingress_cpu: int | None) -> list[tuple[str, int, int]]:
    """(role, pid, cpu) to pin: worker i on cpus[i % len(cpus)], the ingress on ingress_cpu."""
    n = 0
    while f"worker {n}" in procs:
        n += 1
    if not n:
        raise PinError(EXIT_NO_ENGINE, "found no worker processes")
    out = [(f"worker {i}", procs[f"worker {i}"], cpus[i % len(cpus)]) for i in range(n)]
    if ingress_cpu is not None and "ingress" in procs:
        out.append(("ingress", procs["ingress"], ingress_cpu))
    return out


def run(args) -> int:
    # lazy: cli.py imports every command module
    from shm.runtime.topology import affinity_of, format_cpulist, pin_process
    allowed = os.sched_getaffinity(0)
    try:
        for c in [*args.cpus, *([args.ingress] if args.ingress is not None else [])]:
            if c not in allowed:
                raise PinError(EXIT_BAD_ARGS, f"cpu={c} is not in the allowed set {{{format_cpulist(allowed)}}}")
        procs = processes_from_pid_file(args.pid_file) if args.pid_file else processes_from_status(args.instance)
        for role, pid, cpu in plan(procs, args.cpus, args.ingress):
            if args.dry_run:
                print(f"would pin {role} (pid {pid}) to cpu {cpu}")
                continue
            try:
                pin_process(pid, cpu)
            except ProcessLookupError:
                raise PinError(EXIT_GONE, f"{role} (pid {pid}) ended while being pinned (restarted?); "
                                          f"run the command again") from None
    except PinError as e:
        print(f"risk-engine: pin: {e}", file=sys.stderr)
        return e.code
    for role, pid in sorted(procs.items()):
        cpus = affinity_of(pid)
        print(f"{role:<12} pid {pid:<8} cpus {format_cpulist(cpus) if cpus is not None else '(ended)'}")
    return 0
