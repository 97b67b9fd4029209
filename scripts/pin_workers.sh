#!/bin/sh
# Pin the processes of a running risk-engine: a thin wrapper around `risk-engine pin`
# (engine/cmd_pin.py; `scripts/pin_workers.sh --help` shows its options). It runs this
# checkout's code, with this checkout's .venv/bin/python if there is one, else python3 from
# PATH (the command needs only the standard library), so it works from any directory and
# shell, without the venv on PATH. $RISK_ENGINE, if set, names the risk-engine to run instead.
if [ -n "${RISK_ENGINE:-}" ]; then
  exec "$RISK_ENGINE" pin "$@"
fi
repo=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd -P) || exit 2
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=$(command -v python3) || { echo "pin_workers: no $repo/.venv and no python3 on PATH" >&2; exit 2; }
# -I: no cwd, user site or PYTHON* variables on sys.path; the checkout is put first instead
exec "$py" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from engine.cli import main; sys.exit(main(["pin", *sys.argv[2:]]))' "$repo" "$@"
