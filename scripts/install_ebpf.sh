#!/usr/bin/env bash
# Set up eBPF for the risk-engine sidecar on a fresh Debian machine. Idempotent; run as root.
#
#   scripts/install_ebpf.sh
#
# What it does (each step is skipped when already done, and says so):
#   1. apt-get update (once) and install python3-bpfcc (Debian's bcc, never PyPI's `bcc`),
#      linux-headers-amd64, iptables, iproute2, util-linux (the tests use the last three),
#      nftables (python -m bench.enforce and its test compare with an nftables drop rule).
#   2. /lib/modules/$(uname -r)/build -> /usr/src/linux-headers-<v>-amd64 and
#      /lib/modules/$(uname -r)/source -> /usr/src/linux-headers-<v>-common (no headers exist
#      for the running kernel and CONFIG_IKHEADERS is off; docs/EBPF.md).
#   3. mount tracefs at /sys/kernel/tracing if it is not mounted.
#   4. link bcc into ./.venv if that venv exists (scripts/link_bcc.sh).
# Exit status: 0 when set up; 1 with a one-line reason on stderr when it cannot be done.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "install_ebpf: $*" >&2; exit 1; }
say() { echo "install_ebpf: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (uid=$(id -u))"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: only Debian-like systems are supported"

# 1. packages -------------------------------------------------------------------------
PKGS="python3-bpfcc linux-headers-amd64 iptables iproute2 util-linux nftables"
missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
if [ -n "$missing" ]; then
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed"
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >/dev/null \
    || die "apt-get install failed for:$missing"
else
  say "packages already installed: $PKGS"
fi

# 2. kernel header symlinks -----------------------------------------------------------
KREL="$(uname -r)"
MODDIR="/lib/modules/$KREL"
HDR_AMD64="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)"
[ -n "$HDR_AMD64" ] || die "no /usr/src/linux-headers-*-amd64 directory after installing linux-headers-amd64"
HDR_COMMON="${HDR_AMD64%-amd64}-common"
[ -d "$HDR_COMMON" ] || die "missing $HDR_COMMON (expected next to $HDR_AMD64)"
mkdir -p "$MODDIR"
link() {  # link NAME TARGET: make $MODDIR/NAME point at TARGET unless a real dir is there
  local name="$1" target="$2" path="$MODDIR/$1"
  if [ -L "$path" ] && [ "$(readlink "$path")" = "$target" ]; then
    say "$path -> $target (already)"
  elif [ -e "$path" ] && [ ! -L "$path" ]; then
    say "$path exists and is not a symlink: left alone"
  else
    ln -sfn "$target" "$path"
    say "$path -> $target (created)"
  fi
}
link build "$HDR_AMD64"
link source "$HDR_COMMON"

# 3. tracefs --------------------------------------------------------------------------
if [ -e /sys/kernel/tracing/events ]; then
  say "tracefs already mounted at /sys/kernel/tracing"
else
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || die "cannot mount tracefs at /sys/kernel/tracing (CONFIG_TRACING off or no CAP_SYS_ADMIN)"
  say "mounted tracefs at /sys/kernel/tracing"
fi
for tp in tcp/tcp_probe tcp/tcp_retransmit_skb sock/inet_sock_set_state sock/sock_send_length sock/sock_recv_length; do
  [ -e "/sys/kernel/tracing/events/$tp" ] || die "tracepoint $tp missing from this kernel"
done

# 4. bcc into the project venv --------------------------------------------------------
[ -f /usr/lib/python3/dist-packages/bcc/__init__.py ] || die "python3-bpfcc installed but /usr/lib/python3/dist-packages/bcc is missing"
if [ -x .venv/bin/python ]; then
  scripts/link_bcc.sh .venv
else
  say "no ./.venv yet: the Makefile install step links bcc (scripts/link_bcc.sh .venv)"
fi
say "ok"
