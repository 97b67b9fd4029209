"""`risk-engine config`: print the bundled config as a complete file that works wherever it is
saved, check a config (every error at once), or show the effective config a file gives
over the bundled one (shm.runtime.config_overlay)."""
import re
import sys

HELP = "print the default config (--print-default), check a config, or show the effective one"


def add_arguments(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--print-default", action="store_true",
                   help="print the bundled config, comments kept, its file paths made absolute: "
                        "save it anywhere and edit it (a config file may also name only what it "
                        "changes: it overlays the bundled one)")
    g.add_argument("--check", action="store_true",
                   help="validate --config (over the bundled one), its features/lists/state and every "
                        "list file, and list every error; exit 2 if any")
    g.add_argument("--show", action="store_true",
                   help="print the effective config --config gives (over the bundled one), as YAML")
    p.add_argument("--config", help="config file (default: the bundled engine/default.yaml)")


def default_text() -> str:
    """engine/default.yaml with each relative file path (rules.files, lists.*.file, CURVE key
    files) replaced by its absolute form; the YAML it holds equals config.portable_raw()."""
    import yaml   # lazy: yaml and the config are for this command only (cli.py imports every command)
    from shm.runtime.config import DEFAULT_CONFIG, portable_raw
    text = DEFAULT_CONFIG.read_text()
    raw, full = yaml.safe_load(text), portable_raw()
    rel = list(raw.get("rules", {}).get("files", []))
    rel += [s["file"] for s in (raw.get("lists") or {}).values() if s.get("file")]
    for section in ("ingress", "admin"):
        curve = (raw.get(section) or {}).get("curve") or {}
        rel += [curve[k] for k in ("server_secret_file", "authorized_keys_dir") if curve.get(k)]
    for r in sorted(set(rel), key=len, reverse=True):
        if not r.startswith("/"):
            text = re.sub(r"(?<![\w./-])" + re.escape(r) + r"(?![\w./-])",
                          str((DEFAULT_CONFIG.parent / r).resolve()), text)
    head = ("# Written by `risk-engine config --print-default`: the bundled config, its file paths\n"
            "# made absolute so that this file works wherever it is saved.\n")
    if yaml.safe_load(text) != full:         # a path the rewrite missed: exact, without comments
        return head + yaml.safe_dump(full, sort_keys=False)
    return head + text


def check_data(cfg) -> None:
    """What `serve` reads beyond the config's own keys and would refuse: the features, lists
    and state sections (kept raw by parse_config) and every list file's lines and size. Raises
    ConfigError (ConfigErrors for several), every error at once."""
    from shm.features.lists import ListError, load_list_file      # lazy: as in run
    from shm.features.spec import specs_from_config                # lazy: as in run
    from shm.runtime.config_check import collecting, report        # lazy: as in run
    from shm.runtime.config_types import ConfigError               # lazy: as in run
    with collecting():
        for ls in specs_from_config(cfg).lists:
            if not ls.file:
                continue
            try:
                n = len(load_list_file(ls.file, ls.type))
            except ListError as e:
                report(ConfigError(f"lists.{ls.name}.file", str(e)))
                continue
            if n > ls.capacity:
                report(ConfigError(f"lists.{ls.name}.file",
                                   f"{ls.file}: {n} values exceed capacity={ls.capacity}"))


def run(args) -> int:
    import yaml   # lazy: yaml and the config are for this command only (cli.py imports every command)
    from shm.runtime.config import ConfigError, config_to_raw, load_config
    if args.print_default:
        sys.stdout.write(default_text())
        return 0
    try:
        cfg = load_config(args.config)
        if args.check:
            check_data(cfg)
    except ConfigError as e:
        print(f"risk-engine: config error: {e}", file=sys.stderr)
        return 2
    if args.show:
        sys.stdout.write(yaml.safe_dump(config_to_raw(cfg), sort_keys=False))
    else:
        print(f"risk-engine: config {cfg.path}: ok")
    return 0
