"""``python -m bench.perf_threads``: where an engine thread's CPU goes under a bench.targets load.

Runs ``python -m bench.targets --scenarios S --targets engine --rounds 1`` from a checkout
(``--checkout``, default this one), and once the load is on (the ingress's libzmq I/O thread
works), samples the ingress's main thread and the worker's main thread with
``perf record`` (Linux perf, as root or with perf_event_paranoid <= 1) for ``--seconds``.
Numba's compiled code lives in anonymous memory, so perf cannot name it; LLVM registers it
with gdb's JIT interface, so the addresses perf saw are named by gdb attached to the live
process (``info symbol``; this stops the process for a moment, after the sampling). Prints,
per thread, its CPU over the sampling window (CPUs busy: divide by the bench's events/s for
a cost per event) and its samples by function and by library.

The bench's own figures from a profiled run are disturbed (perf, then gdb): read them from a
run without this. Needs ``perf`` and ``gdb`` on PATH.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
ROLES = ("ingress", "worker")            # process titles "risk-engine: <role>..."
_LINE = re.compile(r"\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")
_GDB = re.compile(r"(\S+?)(?:\[abi:[^\]]*\])*(?:\(.*\))?(?: \+ \d+)? in section")


def parse_script(text: str) -> list[tuple[int, str, str]]:
    """``perf script -F ip,sym,dso`` lines as (address, symbol, library file name)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2), m.group(3).rsplit("/", 1)[-1]))
    return out


def anonymous(sym: str, dso: str) -> bool:
    """A sample perf could not name in memory no file backs (JIT code)."""
    return sym in ("[unknown]", "") and (dso in ("[unknown]", "") or "anon" in dso or dso.startswith("perf-"))


def gdb_names(pid: int, addresses: list[int]) -> dict[int, str]:
    """Function names of ``addresses`` in live process ``pid``, from gdb's JIT interface."""
    if not addresses:
        return {}
    cmds = []
    for a in addresses:
        cmds += ["-ex", f"info symbol {a:#x}"]
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx"] + cmds, capture_output=True,
                       text=True, timeout=600)
    answers = [ln for ln in r.stdout.splitlines() if " in section " in ln or ln.startswith("No symbol matches")]
    names = {}
    for a, ln in zip(addresses, answers):
        m = _GDB.match(ln)
        names[a] = "JIT " + (m.group(1) if m else "?")
    return names


def summarize(rows: list, names: dict[int, str], top: int) -> str:
    """Samples by function (JIT ones named) and by library, as percentages."""
    by_fn, by_lib = collections.Counter(), collections.Counter()
    for ip, sym, dso in rows:
        jit = names.get(ip)
        by_fn[jit or f"{sym} ({dso})"] += 1
        by_lib["JIT (Numba)" if jit else dso] += 1
    total = max(1, len(rows))
    lines = [f"  {100 * v / total:5.1f}%  {k}" for k, v in by_fn.most_common(top)]
    lines.append("  by library: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in by_lib.most_common(10)))
    return "\n".join(lines)


def engine_processes(bench_pid: int, timeout_s: float) -> dict[str, int]:
    """role -> pid of the engine the bench started (its descendants' process titles)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = {}
        try:
            for c in psutil.Process(bench_pid).children(recursive=True):
                try:
                    title = " ".join(c.cmdline())
                except psutil.Error:
                    continue
                for role in ROLES:
                    if title.startswith(f"risk-engine: {role}") and role not in found:
                        found[role] = c.pid
        except psutil.NoSuchProcess:
            break
        if len(found) == len(ROLES):
            return found
        time.sleep(0.5)
    raise SystemExit(f"perf_threads: no engine processes {ROLES} under pid={bench_pid} "
                     f"within {timeout_s:.0f} s")


def thread_cpu_s(pid: int, tid: int | None = None) -> float:
    """The CPU seconds of thread ``tid`` (default: the main thread) of ``pid``."""
    with open(f"/proc/{pid}/task/{tid or pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_traffic(pid: int, timeout_s: float) -> None:
    """Until the libzmq I/O thread of ``pid`` (the ingress) works: clients are sending (the
    main thread is busy at start-up too, compiling and warming up)."""
    end = time.monotonic() + timeout_s
    io = None
    while io is None and time.monotonic() < end:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().startswith("ZMQbg/IO"):
                    io = int(tid)
        time.sleep(0.2)
    prev = thread_cpu_s(pid, io)
    while time.monotonic() < end:
        time.sleep(0.5)
        cur = thread_cpu_s(pid, io)
        if cur - prev > 0.05:
            return
        prev = cur
    raise SystemExit(f"perf_threads: no traffic at the ingress (pid={pid}) within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf_threads", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="32x64", help="a bench.targets scenario (default 32x64)")
    ap.add_argument("--seconds", type=float, default=6.0, help="sampling window (default 6)")
    ap.add_argument("--frequency", type=int, default=1999, help="samples per second (default 1999)")
    ap.add_argument("--top", type=int, default=30, help="functions shown per thread (default 30)")
    ap.add_argument("--out", help="keep perf's data files and the bench's output here")
    ap.add_argument("--checkout", default=str(REPO),
                    help="run bench.targets (and so the engine) from this checkout (default this one)")
    a = ap.parse_args(argv)
    for tool in ("perf", "gdb"):
        if shutil.which(tool) is None:
            print(f"perf_threads: {tool} not found on PATH", file=sys.stderr)
            return 2
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="perf_threads."))
    out.mkdir(parents=True, exist_ok=True)
    duration = a.seconds + 30           # the load outlasts the sampling and gdb's look-up
    log = open(out / "targets.log", "w")
    bench = subprocess.Popen([sys.executable, "-m", "bench.targets", "--scenarios", a.scenario,
                              "--targets", "engine", "--rounds", "1", "--duration", str(duration),
                              "--warmup", "1"], cwd=a.checkout, stdout=log, stderr=subprocess.STDOUT)
    try:
        pids = engine_processes(bench.pid, 600)
        wait_for_traffic(pids["ingress"], 600)
        time.sleep(2)                   # past the load generator's warm-up
        cpu0 = {r: thread_cpu_s(p) for r, p in pids.items()}
        t0 = time.monotonic()
        perfs = {r: subprocess.Popen(["perf", "record", "-F", str(a.frequency), "-t", str(p), "-o",
                                      str(out / f"{r}.data"), "--", "sleep", str(a.seconds)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for r, p in pids.items()}
        for p in perfs.values():
            p.wait()
        wall = time.monotonic() - t0
        cpu1 = {r: thread_cpu_s(p) for r, p in pids.items()}
        for role, pid in pids.items():
            text = subprocess.run(["perf", "script", "-i", str(out / f"{role}.data"), "-F", "ip,sym,dso"],
                                  capture_output=True, text=True).stdout
            rows = parse_script(text)
            names = gdb_names(pid, sorted({ip for ip, s, d in rows if anonymous(s, d)}))
            print(f"{role} main thread (pid {pid}): {(cpu1[role] - cpu0[role]) / wall:.2f} CPU over "
                  f"{wall:.1f} s, {len(rows)} samples")
            print(summarize(rows, names, a.top))
    finally:
        bench.wait()
        log.close()
    print(f"bench.targets output: {out / 'targets.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
