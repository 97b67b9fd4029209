"""`risk-engine eval`: one event to a running engine, its decision with the rule names.

Fields come as ``key=value`` arguments (typed by the config's schema) or as one JSON object
on stdin; a field not given is zero (0, 0.0, false, "", 0.0.0.0) and named on stderr, so a
first request fits on one line. The request goes through ingress.client (binary, Lazy
Pirate retries) and the fired rule indexes are named with the engine's rules request.
"""
import json
import sys

HELP = "send one event (key=value ... or JSON on stdin) to a running engine and print its decision"
ZERO = {"uint": 0, "int": 0, "float": 0.0, "bool": False, "bytes": ""}


def add_arguments(p):
    p.add_argument("fields", nargs="*", metavar="KEY=VALUE",
                   help="event fields, e.g. account_id=42 amount=250 country=FR ip=10.0.0.1 "
                        "(none: read one JSON object from stdin)")
    p.add_argument("--config", help="config file whose schema and ingress.bind to use (default: the bundled one)")
    p.add_argument("--endpoint", help="engine address (default: the config's ingress.bind)")
    p.add_argument("--timeout-ms", type=int, default=2000, help="per attempt (default 2000; 3 attempts)")
    p.add_argument("--json", action="store_true", help="print the decision as one JSON object")


class EvalInputError(ValueError):
    """A field argument or the stdin event that cannot be an event of the schema."""


def parse_fields(schema, pairs: list[str]) -> dict:
    """``key=value`` strings -> an event dict with JSON-typed values (checked again by the
    client's EventConverter, which names the field and the code)."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise EvalInputError(f"argument {pair!r}: expected KEY=VALUE")
        if key not in schema.names:
            raise EvalInputError(f"{key}: not a field of the schema (fields: {', '.join(schema.names)})")
        if key in out:
            raise EvalInputError(f"{key}: given twice")
        f = schema.field(key)
        try:
            if f.type == "ipv4":
                out[key] = text if "." in text else int(text, 10)
            elif f.kind in ("uint", "int"):
                out[key] = int(text, 10)
            elif f.kind == "float":
                out[key] = float(text)
            elif f.kind == "bool":
                out[key] = {"true": True, "false": False, "1": True, "0": False}[text.lower()]
            else:
                out[key] = text
        except (ValueError, KeyError):
            raise EvalInputError(f"{key}={text!r}: not a {f.type}") from None
    return out


def complete(schema, event: dict) -> tuple[dict, list[str]]:
    """``event`` with every missing field zero, and the names of those fields."""
    missing = [f for f in schema.fields if f.name not in event]
    zero = {f.name: "0.0.0.0" if f.type == "ipv4" else ZERO[f.kind] for f in missing}
    return {**event, **zero}, [f.name for f in missing]


def connect_address(bind: str) -> str:
    """Where a client on this machine reaches ``bind``: a wildcard host means loopback."""
    from shm.runtime.endpoints import parse_zmq_bind   # lazy: cli.py imports every command module
    ep = parse_zmq_bind(bind, "ingress.bind")
    if ep.transport == "tcp" and ep.kind == "wildcard":
        return f"tcp://{'[::1]' if ':' in ep.host else '127.0.0.1'}:{ep.port}"
    return bind


def run(args) -> int:
    from shm.runtime.config import load_config_cli   # lazy: yaml, zmq, numpy (cli.py imports every command)
    from ingress.client import Client, ClientTimeout, ProtocolError, RequestError
    cfg = load_config_cli(args.config)
    if cfg is None:
        return 2
    schema = cfg.schema
    try:
        if args.fields:
            event = parse_fields(schema, args.fields)
        else:
            if sys.stdin.isatty():
                raise EvalInputError("give KEY=VALUE arguments or one JSON object on stdin")
            event = json.loads(sys.stdin.read())
            if not isinstance(event, dict):
                raise EvalInputError("stdin: expected one JSON object (an event)")
    except (EvalInputError, ValueError) as e:
        print(f"risk-engine eval: {e}", file=sys.stderr)
        return 2
    event, zeroed = complete(schema, event)
    if zeroed:
        print(f"risk-engine eval: zero for the fields not given: {', '.join(zeroed)}", file=sys.stderr)
    if cfg.ingress.curve.enabled and not args.endpoint:
        print("risk-engine eval: ingress.curve is enabled; eval has no CURVE keys to connect with",
              file=sys.stderr)
        return 2
    endpoint = args.endpoint or connect_address(cfg.ingress.bind)
    try:
        with Client(endpoint, schema, timeout_ms=args.timeout_ms, retries=2) as c:
            d = c.resolve(c.evaluate(event))
    except RequestError as e:
        print(f"risk-engine eval: refused: {e}", file=sys.stderr)
        return 1
    except (ClientTimeout, ProtocolError) as e:
        print(f"risk-engine eval: {e} (is an engine serving there?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"action": d.action, "score": d.score, "rules": list(d.rules),
                          "shadow_rules": list(d.shadow_rules), "ruleset": d.ruleset,
                          "generation": d.generation, "nfired": d.nfired, "flags": list(d.flags),
                          "error": d.error}))
        return 0
    print(f"{d.action}  score {d.score:g}  rules: {', '.join(d.rules) or '-'}"
          + (f"  shadow: {', '.join(d.shadow_rules)}" if d.shadow_rules else "")
          + f"  ({d.ruleset or 'no ruleset'}, generation {d.generation})"
          + (f"  flags: {' '.join(d.flags)}" if d.flags else "") + (f"  error: {d.error}" if d.error else ""))
    if d.nfired > len(d.rules) + len(d.shadow_rules):
        print(f"  {d.nfired} rules fired; a binary reply names the first 16", file=sys.stderr)
    return 0
