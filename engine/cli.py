"""`risk-engine` command line: a table of subcommands, each in its own light module.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
and imports heavy things (numba, zmq) inside ``run`` so that ``--help`` stays fast. A command
whose module is not installed is simply not offered.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path

DIST = "risk-engine"

COMMANDS = {
    "serve": "engine.cmd_serve",
    "status": "engine.cmd_status",
    "stats": "engine.cmd_stats",
    "reload": "engine.cmd_reload",
    "admin": "engine.cmd_admin",
    "replay": "engine.cmd_replay",
    "explain": "engine.cmd_explain",
    "journal-upgrade": "engine.cmd_journal_upgrade",
    "pin": "engine.cmd_pin",
    "gc": "engine.cmd_gc",
    "cluster": "engine.cmd_cluster",
    "config": "engine.cmd_config",
    "schema": "engine.cmd_schema",
    "eval": "engine.cmd_eval",
    "check": "rules.cmd_check",
    "test-rules": "rules.cmd_test_rules",
    "keys": "ingress.cmd_keys",
    "sidecar": "bpf.cmd_sidecar",
    "bench": "bench.cmd_bench",
}


def version() -> str:
    """The installed distribution's version (setup.py is its one source). A source checkout
    that was never installed has no metadata: then setup.py's ``version=`` beside the
    packages, marked as such; "unknown" if neither exists."""
    import importlib.metadata          # here: it loads email and zipfile, unneeded by other commands
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        pass
    setup_py = Path(__file__).resolve().parent.parent / "setup.py"
    try:
        tree = ast.parse(setup_py.read_text(), str(setup_py))
    except (OSError, SyntaxError):
        return "unknown"
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "version" and \
                isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return f"{node.value.value} (source checkout, not installed)"
    return "unknown"


class _Version(argparse.Action):
    """--version, looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{DIST} {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="risk-engine", description=(
        "Real-time risk decisions over ZeroMQ: rules compiled to Numba kernels, state in "
        "shared memory."))
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        code = int(args._module.run(args) or 0)
        sys.stdout.flush()              # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:             # `risk-engine stats | head`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the flush at exit cannot fail again
        return 141                      # 128 + SIGPIPE, as a shell reports `yes | head`


if __name__ == "__main__":
    sys.exit(main())
