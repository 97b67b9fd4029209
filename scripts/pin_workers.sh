#!/usr/bin/env bash
# Pin the processes of a running risk-engine with taskset.
#
#   scripts/pin_workers.sh [--instance NAME] [--pid-file F] [--ingress CPU] [--dry-run] CPU [CPU ...]
#
# Worker i is pinned to the i-th CPU listed (the list is reused round-robin if shorter);
# --ingress pins the ingress process too. The processes are found with
# `risk-engine status --pids` (or, with --pid-file, from a supervisor pid file and the
# children's titles `risk-engine: worker N` / `risk-engine: ingress`). Prints the resulting
# affinity of every engine process. A CPU outside the allowed set is refused before anything
# is changed.
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "pin_workers: $*" >&2; exit 2; }

instance=re pid_file= ingress_cpu= dry_run=0 cpus=()
while (($#)); do
  case "$1" in
    --instance) instance=${2:?}; shift 2 ;;
    --pid-file) pid_file=${2:?}; shift 2 ;;
    --ingress) ingress_cpu=${2:?}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    -*) die "unknown option $1" ;;
    *) [[ $1 =~ ^[0-9]+$ ]] || die "cpu=$1: not a CPU number"; cpus+=("$1"); shift ;;
  esac
done
((${#cpus[@]})) || die "no CPU given (usage: pin_workers.sh [options] CPU [CPU ...])"

# The allowed set: what this shell may run on (cgroup/cpuset aware, like the kernel's check).
allowed=$(python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))')
for c in "${cpus[@]}" ${ingress_cpu:+"$ingress_cpu"}; do
  [[ " $allowed " == *" $c "* ]] || die "cpu=$c is not in the allowed set {$allowed}"
done

declare -A pids=()    # role -> pid
if [[ -n $pid_file ]]; then
  sup=$(cat "$pid_file") || die "pid_file=$pid_file: cannot read"
  kill -0 "$sup" 2>/dev/null || die "supervisor pid=$sup (from $pid_file) is not running"
  pids[supervisor]=$sup
  for child in $(pgrep -P "$sup"); do
    title=$(tr '\0' ' ' < "/proc/$child/cmdline" 2>/dev/null || true)
    case "$title" in
      "risk-engine: worker "*) n=${title#risk-engine: worker }; pids[worker${n%% *}]=$child ;;
      "risk-engine: ingress"*) pids[ingress]=$child ;;
    esac
  done
else
  cmd=${RISK_ENGINE:-risk-engine}
  out=$("$cmd" status --instance "$instance" --pids) || die "no running engine with instance=$instance"
  while read -r role pid; do pids[$role]=$pid; done <<< "$out"
fi

nworkers=0
while [[ -n ${pids[worker$nworkers]:-} ]]; do nworkers=$((nworkers + 1)); done
((nworkers)) || die "found no worker processes"

run() { if ((dry_run)); then echo "would run: $*"; else "$@" >/dev/null; fi; }
for ((i = 0; i < nworkers; i++)); do
  run taskset -pc "${cpus[i % ${#cpus[@]}]}" "${pids[worker$i]}"
done
[[ -n $ingress_cpu && -n ${pids[ingress]:-} ]] && run taskset -pc "$ingress_cpu" "${pids[ingress]}"

for role in $(printf '%s\n' "${!pids[@]}" | sort); do
  aff=$(taskset -pc "${pids[$role]}" | sed 's/.*: //')
  printf '%-12s pid %-8s cpus %s\n' "$role" "${pids[$role]}" "$aff"
done
