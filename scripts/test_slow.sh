#!/usr/bin/env bash
# `make test-slow`: the tests marked slow, as two pytest processes at once on the machine's two
# cores. The cluster modules run in one of them, one module after the other (each starts
# three nats-servers and two or three engine nodes; two such modules at once starve each
# other's lease renewals), followed by the bench smoke runs (which balances the halves:
# 11 and 22 minutes without them); everything else runs in the other. The first half's
# output is printed after the other's; the exit code is non-zero when either half failed.
#
#   scripts/test_slow.sh PYTHON
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PYTHON" >&2; exit 1; }
PY="$1"
LOG="$(mktemp "${TMPDIR:-/tmp}/risk-engine-slow-cluster.XXXXXX")"
trap 'rm -f "$LOG"' EXIT
"$PY" -m pytest -q -m slow tests/cluster tests/bench >"$LOG" 2>&1 &
CLUSTER=$!
trap 'kill -TERM "$CLUSTER" 2>/dev/null; wait "$CLUSTER"; rm -f "$LOG"; exit 130' INT TERM
"$PY" -m pytest -q -m slow --ignore=tests/cluster --ignore=tests/bench tests
REST=$?
wait "$CLUSTER"
CLUSTER_RC=$?
echo "---- the cluster modules and the bench smoke runs (tests/cluster, tests/bench; slow) ----"
cat "$LOG"
echo "test_slow: other modules exit $REST, cluster and bench modules exit $CLUSTER_RC"
[ "$REST" -eq 0 ] && [ "$CLUSTER_RC" -eq 0 ]
