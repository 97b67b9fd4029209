#!/usr/bin/env bash
# Install the command-line tools the tests drive when present and CI requires: promtool
# (tests/deploy/test_alerts.py checks deploy/prometheus/alerts.yml with it). Idempotent; run
# as root on Debian. .ci/run calls it and then sets REQUIRE_PROMTOOL=1.
#
#   scripts/install_ci_tools.sh
#
# promtool ships in Debian's `prometheus` package (the server too; on a machine booted with
# systemd its service is enabled: `systemctl disable --now prometheus` if it is unwanted).
# Exit status: 0 when installed; 1 with a one-line reason on stderr when it cannot be.
set -euo pipefail

die() { echo "install_ci_tools: $*" >&2; exit 1; }
say() { echo "install_ci_tools: $*"; }

if command -v promtool >/dev/null 2>&1; then
  say "promtool already installed: $(command -v promtool)"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (uid=$(id -u))"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: only Debian-like systems are supported"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || die "apt-get update failed"
apt-get install -y -q --no-install-recommends prometheus >/dev/null \
  || die "apt-get install failed for: prometheus"
command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool is not on PATH"
say "ok: $(promtool --version 2>&1 | head -n 1)"
