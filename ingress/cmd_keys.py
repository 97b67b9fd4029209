"""`risk-engine keys`: generate a CURVE key pair (zmq.auth certificate files)."""

import os
import re
import sys

HELP = "generate a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret"


def add_arguments(p):
    p.add_argument("--dir", required=True, help="directory for the key files (created if missing)")
    p.add_argument("--name", default="client", help="file name stem (default: client)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")


def run(args) -> int:
    import zmq           # lazy: every risk-engine start imports this module (engine/cli.py)
    import zmq.auth

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", args.name):
        print(f"risk-engine keys: --name={args.name!r}: use letters, digits, _ . -", file=sys.stderr)
        return 2
    if not zmq.has("curve"):
        print("risk-engine keys: this libzmq was built without CURVE", file=sys.stderr)
        return 1
    public = os.path.join(args.dir, f"{args.name}.key")
    secret = public + "_secret"
    existing = [p for p in (public, secret) if os.path.exists(p)]
    if existing and not args.force:
        print(f"risk-engine keys: {existing[0]} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    os.makedirs(args.dir, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.dir, args.name)
    os.chmod(secret, 0o600)
    print(f"public key: {public}")
    print(f"secret key: {secret}")
    return 0
