"""`risk-engine explain`: why a journaled event (or every event of a request) was decided as it
was (docs/EXPLAIN.md)."""

import json
import os
import sys

from rules import RulesetError

HELP = ("replay the journal up to one event (--seq) or each event of a request (--request) and show "
        "every rule, clause and feature value behind its decision")


def add_arguments(p):
    p.add_argument("--journal", required=True, help="journal directory (journal.dir of the engine)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, metavar="N",
                       help="the event's journal sequence number (per writer, from 1)")
    p.add_argument("--writer", type=int, metavar="W",
                   help="the journal writer (worker) of the event; needed when the journal has several")
    which.add_argument("--request", metavar="CLIENT_ID:REQUEST_ID",
                       help="every journaled event of that request (client_id 0 included: refused as "
                            "REQUEST_AMBIGUOUS, with their seqs, when several requests carry the ids)")
    p.add_argument("--config", help="config the engine ran with (default: the bundled default)")
    p.add_argument("--rules", nargs="+", metavar="F", help="candidate rule files shown beside the recorded ruleset (what-if)")
    p.add_argument("--recorded-rules", nargs="+", metavar="F",
                   help="the rule files that decided the event, when they were not the config's (after a reload)")
    p.add_argument("--snapshots", metavar="DIR", help="snapshot directory (default: the config's snapshot.dir)")
    p.add_argument("--no-snapshots", action="store_true", help="replay from the journal's start")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")


def run(args) -> int:
    # lazy: every risk-engine start imports this module (engine/cli.py); numpy, numba
    from shm.runtime.config import ConfigError, load_config
    from engine.explain import ExplainError, Explainer
    from engine.explain_replay import parse_request_key
    key = None
    if args.request is not None:
        if args.writer is not None:
            print("risk-engine: --writer goes with --seq; --request finds its events' writers",
                  file=sys.stderr)
            return 2
        try:
            key = parse_request_key(args.request)
        except ValueError as e:
            print(f"risk-engine: {e}", file=sys.stderr)
            return 2
    try:
        cfg = load_config(args.config)
        abs_ = (lambda fs: [os.path.abspath(f) for f in fs] if fs else None)
        ex = Explainer(cfg, args.journal, rules=abs_(args.recorded_rules), candidate=abs_(args.rules),
                       snapshot_dir=None if args.no_snapshots else (args.snapshots or ""))
        ex = ex.explain_request(*key) if key else ex.explain(args.seq, args.writer)
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return 2
    except RulesetError as e:
        print(f"risk-engine: ruleset refused:\n{e}", file=sys.stderr)
        return 1
    except ExplainError as e:
        print(f"risk-engine: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(ex.to_dict(), indent=1))
    else:
        print(ex.text())
    if not ex.agrees:
        print("risk-engine: REPLAY_MISMATCH: the replayed decision differs from the recorded one "
              "(see above)", file=sys.stderr)
        return 3
    return 0
