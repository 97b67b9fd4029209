"""`risk-engine reload`: ask a running engine to recompile its rules and swap them in."""

import os
import signal
import sys

HELP = "reload the rules of a running engine (compile off the hot path, swap between batches)"


def add_arguments(p):
    p.add_argument("--instance", default="re", help="instance to reload (default: re)")
    p.add_argument("--rules", nargs="+", metavar="F", help="new rule files (default: the current ones)")
    p.add_argument("--previous", action="store_true", help="restore the previous generation's files")


def run(args) -> int:
    # lazy: every risk-engine start imports this module (engine/cli.py)
    from shm.runtime import rundir
    for d, pid in rundir.live_instances():
        if d.name == args.instance:
            req = {"files": [os.path.abspath(f) for f in args.rules] if args.rules else None,
                   "previous": bool(args.previous)}
            rundir.write_json(d, "reload.request", req)
            os.kill(pid, signal.SIGHUP)
            print(f"risk-engine: reload requested from supervisor pid {pid}; its log says the outcome")
            return 0
    print(f"risk-engine: no running engine with instance {args.instance}", file=sys.stderr)
    return 1
