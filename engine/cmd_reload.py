"""`risk-engine reload`: ask a running engine to recompile its rules and swap them in, wait
for the outcome and print it.

The request goes through the run directory (reload-<id>.request, which the supervisor's loop
looks for) and the answer comes back beside it (reload-<id>.result,
engine.reload.reload_reply): whoever may write the run directory (0700: the engine's user or
root) may reload, and the files are not confined to the configured directories as an admin
``reload`` is (docs/DEPLOY.md).
"""
import os
import sys
import time

HELP = "reload the rules of a running engine, wait for the outcome and print it"

EXIT_REFUSED = 1        # the engine refused: the message has the code and file:line:col
EXIT_NO_OUTCOME = 3     # no running engine, it stopped, or no answer within --timeout-s


def add_arguments(p):
    p.epilog = ("--rules replaces the WHOLE rule set with the files given: files serving now and "
                "not named are no longer loaded (name them all to add one). Without --rules the "
                "serving files are read and compiled again. The new generation is recorded in "
                "the state directory (journal.dir/rules) and survives a restart; with "
                "journal.enabled: false a restart serves rules.files. Exit codes: 0 the new "
                "generation serves; 1 refused (RULESET_REFUSED with file:line:col, FILE_NOT_FOUND, "
                "RELOAD_BUSY; the old generation keeps serving); 3 no running engine or no outcome "
                "within --timeout-s.")
    p.add_argument("--instance", default="re", help="instance to reload (default: re)")
    p.add_argument("--rules", nargs="+", metavar="F",
                   help="the new rule files, replacing every file serving now (default: the serving ones)")
    p.add_argument("--previous", action="store_true", help="restore the previous generation's files")
    p.add_argument("--timeout-s", type=float, default=360.0,
                   help="wait this long for the outcome (default 360; the engine gives a reload 300 s)")


def _wait(run_dir, pid: int, rid: str, timeout_s: float):
    """The engine's reply from reload-<rid>.result, or an error string."""
    from shm.runtime import rundir   # lazy: cli.py imports every command module
    name = f"reload-{rid}.result"
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        try:
            rep = rundir.read_json(run_dir, name)
        except FileNotFoundError:
            rep = None
        except (OSError, ValueError):
            rep = None              # being replaced: read it again
        if isinstance(rep, dict):
            (run_dir / name).unlink(missing_ok=True)
            return rep
        if not rundir.is_supervisor(pid):
            return "NO_ENGINE: the engine stopped before it answered"
        time.sleep(0.1)
    return (f"RELOAD_TIMEOUT: no outcome within {timeout_s:g} s; the reload may still finish "
            f"(`risk-engine status` shows the generation)")


def run(args) -> int:
    import uuid   # lazy: it and the run dir are for this command only (cli.py imports every command)
    from shm.runtime import rundir
    if args.rules and args.previous:
        print("risk-engine: reload: give --rules or --previous, not both", file=sys.stderr)
        return 2
    for d, pid in rundir.live_instances():
        if d.name != args.instance:
            continue
        rid = uuid.uuid4().hex
        req = {"files": [os.path.abspath(f) for f in args.rules] if args.rules else None,
               "previous": bool(args.previous)}
        rundir.write_json(d, f"reload-{rid}.request", req)
        rep = _wait(d, pid, rid, args.timeout_s)
        if isinstance(rep, str):
            (d / f"reload-{rid}.request").unlink(missing_ok=True)
            print(f"risk-engine: reload: {rep}", file=sys.stderr)
            return EXIT_NO_OUTCOME
        if not rep.get("ok"):
            err = rep.get("error") or {}
            print(f"risk-engine: {err.get('code')}: {err.get('message')}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"risk-engine: reloaded: generation {rep['generation']} serves {rep['ruleset']} "
              f"from {', '.join(rep['files'])}")
        dropped = [f for f in rep.get("replaced_files") or [] if f not in rep["files"]]
        if dropped:
            print(f"risk-engine: the new files replaced the whole set; no longer loaded: {', '.join(dropped)}")
        print(f"risk-engine: {'recorded in ' + rep['recorded'] + ': a restart serves it again' if rep.get('recorded') else 'not recorded (journal.enabled: false): a restart serves rules.files'}")
        return 0
    print(f"risk-engine: reload: NO_ENGINE: no running engine with instance {args.instance}", file=sys.stderr)
    return EXIT_NO_OUTCOME
