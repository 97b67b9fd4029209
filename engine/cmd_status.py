"""`risk-engine status`: the processes of running engines with pid, role, CPU and NUMA node,
from status.json, which the supervisor keeps current (engine.status_file)."""
import json
import sys

HELP = "list running engine processes: pid, role, CPU, NUMA node, rings"


def add_arguments(p):
    p.add_argument("--instance", help="only this instance")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pids", action="store_true", help="print 'role pid' lines only (for scripts)")


def run(args) -> int:
    from shm.runtime import rundir   # lazy: cli.py imports every command module
    from shm.runtime.topology import pages_by_node
    found = []
    for d, pid in rundir.live_instances():
        if args.instance and d.name != args.instance:
            continue
        try:
            found.append(rundir.read_json(d, "status.json"))
        except (OSError, ValueError):
            continue
    if not found:
        print("risk-engine: no running engine" + (f" with instance {args.instance}" if args.instance else ""),
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    for st in found:
        if args.pids:
            for p in st["processes"]:
                print(f"{p['role'].replace(' ', '')} {p['pid']}")
            continue
        print(f"instance {st['instance']}: {st['bind']}, generation {st['generation']}"
              f"{' (' + st['ruleset'] + ')' if st.get('ruleset') else ''}, metrics {st['metrics'] or 'off'}")
        print(f"  {'PID':>8}  {'ROLE':<12} {'CPU':>4} {'NODE':>5}")
        for p in st["processes"]:
            cpu = p["cpu"] if p["cpu"] >= 0 else "-"
            node = p["node"] if p["node"] >= 0 else "-"
            print(f"  {p['pid']:>8}  {p['role']:<12} {cpu:>4} {node:>5}")
        pids = {p["role"]: p["pid"] for p in st["processes"]}
        for w, (req, resp, bell) in enumerate(st["rings"]):
            where = []
            for name in (req, resp):
                nodes = pages_by_node(pids.get(f"worker {w}", -1), name)
                where.append(",".join(f"node{n}:{c}p" for n, c in sorted(nodes.items())) or "not mapped")
            print(f"  worker {w} rings: /dev/shm{req} [{where[0]}], /dev/shm{resp} [{where[1]}]; "
                  f"doorbell /dev/shm/sem.{bell[1:]}")
    return 0
