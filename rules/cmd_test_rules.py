"""`risk-engine test-rules`: run rule test cases (like `opa test`)."""

import os

from rules.diagnostics import RulesetError

HELP = "run rule test cases: event -> expected action, score, fired rules (exit 1 on failure)"


def add_arguments(p):
    p.add_argument("--rules", nargs="+", required=True, metavar="F", help="rule files")
    p.add_argument("--cases", nargs="+", required=True, metavar="T", help="case files (YAML)")
    p.add_argument("--config", help="config file for schema, thresholds, on_error (default: bundled)")
    p.add_argument("--cache-dir", help="kernel cache directory")
    p.add_argument("-v", "--verbose", action="store_true", help="print the fired rules of every case")


def run(args) -> int:
    # lazy, here and below: every risk-engine start imports this module (engine/cli.py), and
    # these load numpy and yaml (config, cases), then numba (compiler) once the config is read
    from shm.runtime.config import load_config_cli
    from rules.case_runner import run_case
    from rules.cases import CaseFileError, check_case, load_cases
    cfg = load_config_cli(args.config)
    if cfg is None:
        return 2
    from rules.compiler import compile_ruleset     # lazy: numba (see above)
    from rules.features import feature_set_for
    try:
        rs = compile_ruleset(args.rules, cfg.schema, thresholds=cfg.rules.thresholds,
                             on_error=cfg.rules.on_error, cache_dir=args.cache_dir,
                             features=feature_set_for(cfg))
    except RulesetError as e:
        for d in e.diagnostics:
            print(d)
        return 1
    passed = failed = 0
    for path in args.cases:
        try:
            cases = load_cases(path)
            results = [run_case(rs, c) for c in cases]   # each from empty feature tables
        except (OSError, CaseFileError, ValueError) as e:
            print(f"ERROR {path}: {e}")
            failed += 1
            continue
        for c, ((action, score, fired), ref) in zip(cases, results):
            probs = check_case(c, action, score, fired, rs.rule_ids, ref)
            tag = f"{os.path.basename(path)}: {c.name}"
            if probs:
                failed += 1
                print(f"FAIL  {tag}")
                for p in probs:
                    print(f"        {p}")
            else:
                passed += 1
                print(f"PASS  {tag}")
            if args.verbose:
                print(f"        fired: {', '.join(rs.rule_ids[k] for k in sorted(fired)) or '-'}"
                      f"  score {score:g}")
    total = passed + failed
    print("-" * 80)
    print(f"PASS: {passed}/{total}")
    if failed:
        print(f"FAIL: {failed}/{total}")
    return 1 if failed or not total else 0
