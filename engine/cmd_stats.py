"""`risk-engine stats`: the metrics of a running engine as JSON (through the admin plane)."""

import json

from engine.cmd_admin import send

HELP = "print a running engine's counters and histograms as JSON"


def add_arguments(p):
    p.add_argument("--instance", default="re", help="instance (default: re)")
    p.add_argument("--bind", help="admin address (default: from the instance's status file)")
    p.add_argument("--timeout-ms", type=int, default=10_000, help="reply timeout in ms")


def run(args) -> int:
    code, rep = send(args, {"cmd": "stats"})
    if code == 0:
        print(json.dumps(rep["stats"], indent=1))
    return code
