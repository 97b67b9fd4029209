#!/usr/bin/env bash
# Make Debian's bcc (python3-bpfcc) importable from a venv: symlink
# /usr/lib/python3/dist-packages/bcc into VENV_DIR's site-packages.
#
#   scripts/link_bcc.sh VENV_DIR
#
# A no-op with a message (exit 0) when python3-bpfcc is not installed, so the Makefile can
# always call it. Exit 1 only on bad usage or a VENV_DIR that is not a venv.
set -euo pipefail
SRC=/usr/lib/python3/dist-packages/bcc
[ $# -eq 1 ] || { echo "usage: $0 VENV_DIR" >&2; exit 1; }
VENV="$1"
[ -x "$VENV/bin/python" ] || { echo "link_bcc: venv_dir=$VENV has no bin/python" >&2; exit 1; }
if [ ! -f "$SRC/__init__.py" ]; then
  echo "link_bcc: $SRC not present (python3-bpfcc not installed): nothing linked"
  exit 0
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
DEST="$SITE/bcc"
if [ -L "$DEST" ] && [ "$(readlink "$DEST")" = "$SRC" ]; then
  echo "link_bcc: $DEST -> $SRC (already)"
elif [ -e "$DEST" ] && [ ! -L "$DEST" ]; then
  echo "link_bcc: $DEST exists and is not a symlink (PyPI's unrelated 'bcc'?): left alone" >&2
  exit 1
else
  ln -sfn "$SRC" "$DEST"
  echo "link_bcc: $DEST -> $SRC (created)"
fi
