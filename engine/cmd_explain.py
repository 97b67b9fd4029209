"""`risk-engine explain`: why one journaled event was decided as it was (docs/EXPLAIN.md)."""
HELP = "replay the journal up to one event and show every rule, clause and feature value behind its decision"


def add_arguments(p):
    p.add_argument("--journal", required=True, help="journal directory (journal.dir of the engine)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, metavar="N",
                       help="the event's journal sequence number (per writer, from 1)")
    p.add_argument("--writer", type=int, metavar="W",
                   help="the journal writer (worker) of the event; needed when the journal has several")
    which.add_argument("--request", metavar="CLIENT_ID:REQUEST_ID",
                       help="not available: the journal does not record request ids (docs/EXPLAIN.md)")
    p.add_argument("--config", help="config the engine ran with (default: the bundled default)")
    p.add_argument("--rules", nargs="+", metavar="F", help="candidate rule files shown beside the recorded ruleset (what-if)")
    p.add_argument("--recorded-rules", nargs="+", metavar="F",
                   help="the rule files that decided the event, when they were not the config's (after a reload)")
    p.add_argument("--snapshots", metavar="DIR", help="snapshot directory (default: the config's snapshot.dir)")
    p.add_argument("--no-snapshots", action="store_true", help="replay from the journal's start")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")


def run(args) -> int:
    import json
    import os
    import sys
    from engine.config import ConfigError, load_config
    from engine.explain import ExplainError, explain
    from rules import RulesetError
    if args.request is not None:
        print("risk-engine: REQUEST_NOT_JOURNALED: the journal records the event, its arrival time and "
              "its decision, not the client_id/request_id it came with; find the event's writer and "
              "seq (docs/EXPLAIN.md) and use --seq", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        abs_ = (lambda fs: [os.path.abspath(f) for f in fs] if fs else None)
        ex = explain(cfg, args.journal, args.seq, args.writer, rules=abs_(args.recorded_rules),
                     candidate=abs_(args.rules),
                     snapshot_dir=None if args.no_snapshots else (args.snapshots or ""))
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
