"""`risk-engine schema`: print the event record layout of a config."""

import sys

HELP = "print the event record layout (numpy dtype, or a C struct with --c-header)"


def add_arguments(p):
    p.add_argument("--config", help="config file (default: the bundled default)")
    p.add_argument("--c-header", action="store_true", help="print the record as a C struct")


def run(args) -> int:
    from shm.runtime.config import load_config_cli   # lazy: numpy, yaml (cli.py imports us)
    cfg = load_config_cli(args.config)
    if cfg is None:
        return 2
    s = cfg.schema
    if args.c_header:
        sys.stdout.write(s.c_header())
        return 0
    print(f"schema hash 0x{s.hash:016x}, record size {s.record_size} bytes, shard key {s.shard_key}")
    for f in s.fields:
        print(f"  {f.name:<16} {f.type:<8} offset {s.dtype.fields[f.name][1]}")
    return 0
