"""`risk-engine check`: compile rule files and report like a compiler."""

import sys
import time

from rules.diagnostics import RulesetError

HELP = "compile rule files and report errors as file:line:col: message (exit 1 on error)"


def add_arguments(p):
    p.add_argument("--rules", nargs="+", metavar="F", help="rule files (default: the config's rules.files)")
    p.add_argument("--config", help="config file for the schema (default: the bundled default)")
    p.add_argument("--no-kernel", action="store_true", help="check only; do not generate or compile the kernel")
    p.add_argument("--cache-dir", help="kernel cache directory (default: $RISK_ENGINE_CACHE or ~/.cache/risk-engine/kernels)")


def run(args) -> int:
    # lazy, here and below: every risk-engine start imports this module (engine/cli.py); config
    # loads numpy and yaml, and the compiler numba only once the inputs passed the cheap checks
    from shm.runtime.config import load_config_cli
    from shm.runtime.securedir import UnsafePathError
    cfg = load_config_cli(args.config)
    if cfg is None:
        return 2
    files = args.rules or list(cfg.rules.files)
    if not files:
        print("risk-engine check: no rule files (give --rules or set rules.files)", file=sys.stderr)
        return 2
    from rules.loader import MAX_RULE_FILE_BYTES      # lazy: see the top of run
    from shm.runtime.textfile import TextFileError, read_text_file
    for f in files:                         # a FIFO, a device, a huge file: usage error, exit 2
        try:
            read_text_file(f, MAX_RULE_FILE_BYTES, "rule file")
        except TextFileError as e:
            print(f"risk-engine check: {e}", file=sys.stderr)
            return 2
    from rules.compiler import check_ruleset, compile_ruleset     # lazy: numba (top of run)
    from rules.features import feature_set_for, feature_symbols
    t0 = time.perf_counter()
    try:
        fs = feature_set_for(cfg)           # the config's features, lists, state (local tables)
        if args.no_kernel:
            loaded, compiled = check_ruleset(files, cfg.schema, feature_symbols(fs))
            label = "+".join(f"{rf.name}@{rf.version}" for rf in loaded)
            modes = [r.mode for r, _ in compiled]
            extra = "kernel not compiled"
        else:
            rs = compile_ruleset(files, cfg.schema, thresholds=cfg.rules.thresholds,
                                 on_error=cfg.rules.on_error, cache_dir=args.cache_dir, features=fs)
            label, modes = rs.label, rs.modes
            extra = f"kernel {rs.source_hash}"
    except UnsafePathError as e:            # the kernel cache holds code: never a shared dir
        print(f"risk-engine check: {e}", file=sys.stderr)
        return 2
    except RulesetError as e:
        for d in e.diagnostics:
            print(d)
        n = len(e.diagnostics)
        print(f"{n} error{'s' if n != 1 else ''}; ruleset refused", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    shadow = sum(m == "shadow" for m in modes)
    print(f"ok: {label}: {len(modes)} rules ({len(modes) - shadow} enforce, {shadow} shadow), {extra}, {dt:.2f} s")
    return 0
