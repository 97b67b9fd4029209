"""`risk-engine admin`: send one command to a running engine's admin plane."""

import json
import sys

HELP = ("send an admin command to a running engine: status, stats, reload, snapshot, features, "
        "list-show|list-add|list-remove|list-replace, autoblock-remove values='[ADDR, ...]' (lift "
        "a block_source rule's block now), set-state, halt, resume, "
        "explain seq=N [writer=W] | explain request=CLIENT_ID:REQUEST_ID, cluster (a cluster node: "
        "its partitions and control revision; state changes go to every node)")


def add_arguments(p):
    p.add_argument("--instance", default="re", help="instance (default: re)")
    p.add_argument("--bind", help="admin address (default: from the instance's status file)")
    p.add_argument("--timeout-ms", type=int, default=60_000, help="reply timeout in ms (default 60000)")
    p.add_argument("cmd", help="command name (see above)")
    p.add_argument("args", nargs="*", metavar="KEY=VALUE",
                   help="arguments; VALUE is parsed as JSON when it parses (files='[\"a.yaml\"]')")


def find_admin_bind(instance: str) -> str | None:
    from shm.runtime import rundir   # lazy: every risk-engine start imports this module (cli.py)
    for d, _pid in rundir.live_instances():
        if d.name == instance:
            try:
                return rundir.read_json(d, "status.json").get("admin")
            except (OSError, ValueError):
                return None
    return None


def send(args, req: dict) -> tuple[int, dict | None]:
    from engine.admin_client import request   # lazy: zmq (cli.py imports this module)
    bind = args.bind or find_admin_bind(args.instance)
    if not bind:
        print(f"risk-engine: no running engine with instance {args.instance}", file=sys.stderr)
        return 1, None
    try:
        rep = request(bind, req, args.timeout_ms)
    except TimeoutError as e:
        print(f"risk-engine: {e}", file=sys.stderr)
        return 1, None
    if not rep.get("ok"):
        err = rep.get("error", {})
        print(f"risk-engine: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1, rep
    return 0, rep


def run(args) -> int:
    req = {"cmd": args.cmd}
    for kv in args.args:
        k, sep, v = kv.partition("=")
        if not sep:
            print(f"risk-engine: argument {kv!r} is not KEY=VALUE")
            return 2
        try:
            req[k] = json.loads(v)
        except ValueError:
            req[k] = v
    code, rep = send(args, req)
    if rep is not None and code == 0:
        print(json.dumps(rep, indent=1))
    return code
