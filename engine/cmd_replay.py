"""`risk-engine replay`: backtest a candidate ruleset on journaled traffic."""

import os
import sys

from rules import RulesetError

HELP = "re-evaluate journaled events with a candidate ruleset and print what would change"


def add_arguments(p):
    p.add_argument("--journal", required=True, help="journal directory (journal.dir of the engine)")
    p.add_argument("--rules", nargs="+", metavar="F", help="candidate rule files (default: the config's)")
    p.add_argument("--config", help="config file (default: the bundled default); its rules are the baseline")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def run(args) -> int:
    # lazy: every risk-engine start imports this module (engine/cli.py); numpy, numba
    from shm.runtime.config import ConfigError, load_config
    from engine.journal import JournalError
    from engine.replay import replay, stderr_progress
    try:
        cfg = load_config(args.config)
        files = [os.path.abspath(f) for f in args.rules] if args.rules else None
        rep = replay(args.journal, cfg, files, progress=None if args.no_progress else stderr_progress())
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return 2
    except RulesetError as e:
        print(f"risk-engine: ruleset refused:\n{e}", file=sys.stderr)
        return 1
    except (JournalError, FileNotFoundError) as e:
        print(f"risk-engine: {e}", file=sys.stderr)
        return 1
    if not args.no_progress:
        print(file=sys.stderr)
    print(rep.text())
    return 0
