"""`risk-engine journal-upgrade`: a version-1 journal rewritten in the current format."""

import sys

HELP = ("convert a journal of the previous format (version 1, no request ids) into a new directory "
        "in the current one, same writers and sequence numbers (docs/DURABILITY.md)")


def add_arguments(p):
    p.add_argument("--from", dest="src", required=True, metavar="DIR", help="the version-1 journal directory")
    p.add_argument("--to", dest="dst", required=True, metavar="DIR", help="a new (absent or empty) directory")
    p.add_argument("--config", help="config the engine ran with (schema, journal.segment_bytes; default: bundled)")


def run(args) -> int:
    # lazy: every risk-engine start imports this module (engine/cli.py); numpy, numba
    from shm.runtime.config import ConfigError, load_config
    from engine.journal import JournalError
    from engine.journal_upgrade import upgrade
    try:
        cfg = load_config(args.config)
        rep = upgrade(args.src, args.dst, cfg.schema.dtype, cfg.schema.hash,
                      cfg.durability.journal_config())
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return 2
    except (JournalError, OSError) as e:
        print(f"risk-engine: {e}", file=sys.stderr)
        return 1
    print(rep.text())
    return 0
