"""``python -m bench.enforce``: what kernel enforcement (issue 23) costs and buys, measured in two
network namespaces made here and joined by a veth pair (bench/netns.py; 10.200.N.0/24 only
inside them, removed at the end). Root, bcc, gcc, nft and ip are needed.

Part 1, the flood: a real engine (``enforce: off``) serves on the veth address in the server
namespace; from the client namespace bench/synflood.c sends TCP SYNs to its port from a
source to block (each a new connection attempt), bounded in count and time. Windows, one of
each per round, in one order in even rounds and the reverse in odd ones (bench.targets):

* drop: the flood alone, dropped by XDP, by TC (bpf/enforce.c, the program the engine
  attaches, loaded here) or by an nftables rule doing the same drop (netdev family, ingress
  hook of the same interface: the earliest nftables hook). Packets/s dropped (the program's
  or the rule's own counter) and the CPU of the whole machine over the window (/proc/stat).
* clients: the C load generator (bench/cload.py; closed loop, one event per request) from
  another source address while nothing floods (quiet), while the flood is dropped by XDP,
  and while it reaches the stack unhindered (none): p50/p99, requests/s, errors.

Part 2, the update latency: an engine enforcing ``blocked_ips`` with XDP; K times: admin
``list-add`` of a source, one SYN from it, then ``list-remove``; the time from the reply to the
drop's ring-buffer timestamp (bench/enforce_update.py). Issue 23 asks for under 1 ms.

Every exit path (an error, Ctrl-C, SIGTERM) stops the flood and load processes and the
engines, detaches the programs, deletes the nft table and the namespaces. The machine's
other work shows in the CPU figures: they are the whole machine's. Exit 0 after a run, 2 when
it could not be made (the reason on stderr).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DROP_WINDOWS = ("xdp", "tc", "nft")
CLIENT_WINDOWS = ("quiet", "xdp", "none")
LIST = "blocked_ips"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=5.0, metavar="S", help="measured seconds per window (default 5)")
    p.add_argument("--rounds", type=int, default=3, metavar="K",
                   help="rounds of every window, the order reversed every other round (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, metavar="S", help="client warm-up per client window (default 1)")
    p.add_argument("--clients", type=int, default=8, help="legitimate clients, one request in flight each (default 8)")
    p.add_argument("--flood-pps", type=int, default=0, metavar="R",
                   help="pace the flood to R SYNs/s (default 0: as fast as one sender goes, so the "
                        "drop windows measure how many the machine drops)")
    p.add_argument("--flood-count", type=int, default=100_000_000, metavar="N",
                   help="at most N SYNs per window (default 100000000; the window's time bounds it too)")
    p.add_argument("--update-reps", type=int, default=200, metavar="N",
                   help="list-add/probe/list-remove repetitions of part 2 (default 200; 0 skips it)")
    p.add_argument("--no-flood", action="store_true", help="skip part 1 (the flood)")
    p.add_argument("--start-timeout", type=float, default=300.0, metavar="S", help="engine start-up limit (default 300)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def check_args(a) -> None:
    if a.rounds < 1 or a.clients < 1 or a.flood_pps < 0 or a.flood_count < 1 or a.update_reps < 0:
        raise SystemExit(f"bench.enforce: rounds={a.rounds} clients={a.clients} flood_pps={a.flood_pps} "
                         f"flood_count={a.flood_count} update_reps={a.update_reps}: need rounds >= 1, "
                         "clients >= 1, flood-pps >= 0, flood-count >= 1, update-reps >= 0")
    if not 0 < a.duration <= 600 or not 0 <= a.warmup <= 60:
        raise SystemExit(f"bench.enforce: duration={a.duration} warmup={a.warmup}: need 0 < duration "
                         "<= 600, 0 <= warmup <= 60")
    if a.no_flood and a.update_reps == 0:
        raise SystemExit("bench.enforce: --no-flood with --update-reps 0 leaves nothing to run")


def missing() -> str | None:
    """Why the bench cannot run here, or None."""
    from bpf.availability import check_ebpf  # lazy: --help stays light
    gone = check_ebpf(tracepoints=False)
    if gone is not None:
        return gone.reason
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (apt-get install {pkg}; scripts/install_ebpf.sh)"
    return None


# --- the machine's CPU ------------------------------------------------------------------------
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, int]:
    """The ``cpu`` line of /proc/stat: every CPU's ticks by kind since boot."""
    with open("/proc/stat") as f:
        vals = f.readline().split()[1:1 + len(_CPU_FIELDS)]
    return dict(zip(_CPU_FIELDS, map(int, vals)))


def cpu_delta(c0: dict, c1: dict) -> dict:
    """Shares of all CPUs' time between two reads, in %, and kernel seconds (system + irq +
    softirq, where a drop's cost lands)."""
    d = {k: c1[k] - c0[k] for k in _CPU_FIELDS}
    total = sum(d.values()) or 1
    hz = os.sysconf("SC_CLK_TCK")
    return {"user_pct": round(100 * (d["user"] + d["nice"]) / total, 1),
            "system_pct": round(100 * d["system"] / total, 1),
            "softirq_pct": round(100 * (d["irq"] + d["softirq"]) / total, 1),
            "idle_pct": round(100 * (d["idle"] + d["iowait"]) / total, 1),
            "kernel_s": (d["system"] + d["irq"] + d["softirq"]) / hz}


# --- the nftables rule ------------------------------------------------------------------------
class NftDrop:
    """``ip saddr SOURCE tcp dport PORT counter drop`` on the netdev ingress hook of the
    server's interface, in a table of its own (``risk_engine_bench_<pid>``) in the server
    namespace; ``delete()`` is idempotent (and the namespace's deletion removes it too)."""

    def __init__(self, net, source: str, port: int):
        self.net, self.source, self.port = net, source, port
        self.table = f"risk_engine_bench_{os.getpid()}"
        self.added = False

    def _nft(self, *args: str, script: str | None = None) -> str:
        r = subprocess.run([*self.net.exec_prefix(self.net.server_ns), "nft", *args],
                           input=script, capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} failed: rc={r.returncode} {r.stderr.strip()[:300]}")
        return r.stdout

    def add(self) -> None:
        self.added = True
        self._nft("-f", "-", script=(
            f"table netdev {self.table} {{\n"
            f"  chain ingress {{\n"
            f"    type filter hook ingress device \"{self.net.server_if}\" priority -500; policy accept;\n"
            f"    ip saddr {self.source} tcp dport {self.port} counter drop\n"
            f"  }}\n}}\n"))

    def dropped(self) -> int:
        doc = json.loads(self._nft("-j", "list", "table", "netdev", self.table))
        for item in doc.get("nftables", []):
            for e in item.get("rule", {}).get("expr", []):
                if "counter" in e:
                    return int(e["counter"]["packets"])
        raise RuntimeError(f"nft table {self.table}: no counter in {doc}")

    def delete(self) -> None:
        if self.added:
            self.added = False
            subprocess.run([*self.net.exec_prefix(self.net.server_ns), "nft", "delete", "table",
                            "netdev", self.table], capture_output=True, timeout=10)


class Setup:
    """Everything part 1 made, so that one ``close()`` undoes it on every exit path."""

    def __init__(self, net):
        self.net = net
        self.enforcers: dict = {}                # mode -> bpf.enforce.Enforcer
        self.nft = NftDrop(net, net.blocked, 0)
        self.flood = None
        self.engines: list = []

    def apply(self, cond: str) -> None:
        if cond in ("xdp", "tc"):
            with self.net.inside(self.net.server_ns):
                self.enforcers[cond].attach()
        elif cond == "nft":
            self.nft.add()

    def unapply(self, cond: str) -> None:
        if cond in ("xdp", "tc"):
            with self.net.inside(self.net.server_ns):
                self.enforcers[cond].detach()
        elif cond == "nft":
            self.nft.delete()

    def dropped(self, cond: str) -> int:
        if cond in ("xdp", "tc"):
            return self.enforcers[cond].counters()[f"dropped:{LIST}"]
        return self.nft.dropped() if cond == "nft" else 0

    def close(self) -> list[str]:
        """Undo everything, each step even when an earlier one failed; the lines of what failed."""
        errors = []
        steps = [lambda: self.flood and self.flood.kill(), self.nft.delete]
        steps += [lambda e=e: self._close_enforcer(e) for e in self.enforcers.values()]
        steps += [lambda e=e: self._close_engine(e) for e in self.engines]
        for step in steps:
            try:
                step()
            except Exception as e:            # keep undoing the rest
                errors.append(f"clean-up: {type(e).__name__}: {e}")
        return errors

    def _close_engine(self, eng) -> None:
        self.engines.remove(eng)
        rc = eng.close()
        if rc not in (0, None):
            raise RuntimeError(f"engine instance={eng.instance} exit code {rc} after SIGTERM "
                               f"(expected 0):\n{eng.output()[-2000:]}")

    def _close_enforcer(self, e) -> None:
        with self.net.inside(self.net.server_ns):      # the interface is found in that namespace
            e.close()


def start_engine(net, tmp: Path, start_timeout_s: float, enforce: bool):
    """A real engine serving on the veth address inside the server namespace (metrics on its
    lo there); ``enforce``: XDP on blocked_ips, an empty list at start."""
    import yaml  # lazy: --help stays light
    from bench.engine_proc import EngineProcess  # lazy: --help stays light
    overrides = {"workers": {"standby": False}}
    if enforce:
        overrides["lists"] = {LIST: {"type": "ipv4", "capacity": 64}}
        overrides["enforce"] = {"mode": "xdp", "interface": "auto", "lists": [LIST], "required": True}
    tmp.mkdir(parents=True, exist_ok=True)
    # own_session=False: the engine stays in the bench's session (tests find everything a run
    # started there) with a process group of its own (a terminal's Ctrl-C reaches the bench only)
    eng = EngineProcess(tmp, workers=1, metrics=True, prefix=tuple(net.exec_prefix(net.server_ns)),
                        overrides=overrides, ready_timeout_s=start_timeout_s, own_session=False)
    eng.raw["ingress"]["bind"] = f"tcp://{net.server}:{eng.port}"
    eng.config_path.write_text(yaml.safe_dump(eng.raw, sort_keys=False))
    return eng


# --- part 1 -------------------------------------------------------------------------------------
def drop_window(a, s: Setup, exe, cond: str, port: int) -> dict:
    from bench.synflood import Flood  # lazy: --help stays light
    net = s.net
    s.apply(cond)
    try:
        d0, c0, t0 = s.dropped(cond), cpu_times(), time.monotonic()
        s.flood = Flood(exe, net.exec_prefix(net.client_ns), net.blocked, net.server, port,
                        a.flood_count, a.duration, a.flood_pps).start()
        fdoc = s.flood.wait()
        s.flood = None
        d1, c1, t1 = s.dropped(cond), cpu_times(), time.monotonic()
    finally:
        s.unapply(cond)
    cpu = cpu_delta(c0, c1)
    dropped = d1 - d0
    return {"kind": "drop", "condition": cond, "window_s": round(t1 - t0, 3), "flood": fdoc,
            "dropped": dropped, "dropped_per_s": round(dropped / (t1 - t0)), "cpu": cpu,
            "kernel_ns_per_drop": round(cpu["kernel_s"] * 1e9 / dropped, 1) if dropped else None,
            "flood_sys_ns_per_packet": round(fdoc["cpu_sys_s"] * 1e9 / fdoc["sent"], 1) if fdoc["sent"] else None}


def clients_window(a, s: Setup, exes, payloads: Path, cond: str, eng) -> dict:
    from bench import cload  # lazy: --help stays light
    from bench.loadgen import run_client_id_base  # lazy: --help stays light
    from bench.synflood import Flood  # lazy: --help stays light
    net, (flood_exe, load_exe) = s.net, exes
    s.apply(cond)
    try:
        if cond != "quiet":
            s.flood = Flood(flood_exe, net.exec_prefix(net.client_ns), net.blocked, net.server,
                            eng.port, a.flood_count, a.warmup + a.duration + 30, a.flood_pps).start()
            time.sleep(0.2)                     # the clients connect while it floods
        d0, c0, t0 = s.dropped(cond), cpu_times(), time.monotonic()
        load = cload.Load(f"tcp://{net.allowed}:0;{net.server}:{eng.port}", "engine", clients=a.clients,
                          batch=1, duration_s=a.duration, warmup_s=a.warmup)
        with net.inside(net.client_ns):         # the load processes are forked in there
            doc = cload.run_c(load_exe, load, payloads, run_client_id_base())
        d1, c1, t1 = s.dropped(cond), cpu_times(), time.monotonic()
        fdoc = s.flood.stop() if s.flood is not None else None
        s.flood = None
    finally:
        s.unapply(cond)
    return {"kind": "clients", "condition": cond, "window_s": round(t1 - t0, 3), "flood": fdoc,
            "dropped": d1 - d0, "dropped_per_s": round((d1 - d0) / (t1 - t0)), "cpu": cpu_delta(c0, c1),
            "clients": doc}


def run_flood(a, s: Setup, tmp: Path) -> list[dict]:
    from bench import cload  # lazy: --help stays light
    from bench.synflood import build  # lazy: --help stays light
    from bench.targets import round_order  # lazy: --help stays light
    from bpf.enforce import Enforcer  # lazy: --help stays light
    from shm.ipv4 import parse_ipv4  # lazy: --help stays light
    net = s.net
    exes = (build(), cload.build())
    payloads = tmp / "payloads"
    cload.write_payloads(payloads, None, 1, size=64)
    print("bench.enforce: starting the engine in the server namespace ...", file=sys.stderr, flush=True)
    eng = start_engine(net, tmp / "flood", a.start_timeout, enforce=False)
    s.engines.append(eng)
    eng.start()
    s.nft.port = eng.port
    for mode in ("xdp", "tc"):
        e = Enforcer(mode, net.server_if, (eng.port,), ((LIST, "ipv4"),))
        s.enforcers[mode] = e
        e.load()
        e.replace(LIST, [parse_ipv4(net.blocked)])
    windows = [("drop", c) for c in DROP_WINDOWS] + [("clients", c) for c in CLIENT_WINDOWS]
    out = []
    for k in range(a.rounds):
        for kind, cond in round_order(windows, k):
            print(f"bench.enforce: round {k + 1}/{a.rounds}: {kind} {cond}", file=sys.stderr, flush=True)
            w = (drop_window(a, s, exes[0], cond, eng.port) if kind == "drop"
                 else clients_window(a, s, exes, payloads, cond, eng))
            w["round"] = k + 1
            out.append(w)
    return out


# --- the report ---------------------------------------------------------------------------------
def aggregate(windows: list[dict]) -> dict:
    """Per (kind, condition): rates over the summed windows, CPU shares averaged, client
    percentiles from the rounds' summed histograms."""
    from bench import cload  # lazy: --help stays light
    out = {}
    for kind, conds in (("drop", DROP_WINDOWS), ("clients", CLIENT_WINDOWS)):
        for cond in conds:
            ws = [w for w in windows if w["kind"] == kind and w["condition"] == cond]
            if not ws:
                continue
            secs = sum(w["window_s"] for w in ws)
            dropped = sum(w["dropped"] for w in ws)
            sent = sum(w["flood"]["sent"] for w in ws if w["flood"])
            fsecs = sum(w["flood"]["elapsed_s"] for w in ws if w["flood"])
            r = {"rounds": len(ws), "window_s": round(secs, 3), "dropped": dropped,
                 "dropped_per_s": round(dropped / secs), "sent_per_s": round(sent / fsecs) if fsecs else 0,
                 "per_round_dropped_per_s": [w["dropped_per_s"] for w in ws]}
            r.update({k: round(sum(w["cpu"][k] for w in ws) / len(ws), 1)
                      for k in ("user_pct", "system_pct", "softirq_pct", "idle_pct")})
            kernel_s = sum(w["cpu"]["kernel_s"] for w in ws)
            r["kernel_ns_per_drop"] = round(kernel_s * 1e9 / dropped, 1) if dropped else None
            if kind == "clients":
                m = cload.merge([w["clients"] for w in ws])
                r.update({"p50_us": m["p50_us"], "p99_us": m["p99_us"], "ok": m["ok"],
                          "requests_per_s": round(m["ok"] / sum(w["clients"]["window_s"] for w in ws)),
                          "errors": m["errors"], "error_count": m["error_count"],
                          "per_round_p99_us": [round(w["clients"]["p99_us"]) for w in ws]})
            out[f"{kind}:{cond}"] = r
    return out


def table(agg: dict, update: dict | None) -> str:
    lines = []
    if any(k.startswith("drop:") for k in agg):
        lines += ["the flood alone: SYNs/s sent and dropped, and the whole machine's CPU over the window",
                  f"{'dropped by':<10} {'sent/s':>10} {'dropped/s':>10} {'user%':>6} {'system%':>8} "
                  f"{'softirq%':>8} {'idle%':>6} {'kernel ns/drop':>14}  dropped/s per round"]
        for cond in DROP_WINDOWS:
            r = agg.get(f"drop:{cond}")
            if r:
                lines.append(f"{cond:<10} {r['sent_per_s']:>10,} {r['dropped_per_s']:>10,} {r['user_pct']:>6} "
                             f"{r['system_pct']:>8} {r['softirq_pct']:>8} {r['idle_pct']:>6} "
                             f"{str(r['kernel_ns_per_drop']):>14}  {r['per_round_dropped_per_s']}")
        lines += ["", "legitimate clients (one event per request, closed loop) from another source; "
                  "flood sent/s over the flood's whole run (from 0.2 s before the clients to after "
                  "them), dropped/s over the clients' run",
                  f"{'condition':<18} {'p50 us':>8} {'p99 us':>8} {'req/s':>8} {'errors':>6} "
                  f"{'flood sent/s':>12} {'dropped/s':>10} {'idle%':>6}  p99 us per round"]
        names = {"quiet": "no flood", "xdp": "flood, XDP drops", "none": "flood, no drop"}
        for cond in CLIENT_WINDOWS:
            r = agg.get(f"clients:{cond}")
            if r:
                lines.append(f"{names[cond]:<18} {r['p50_us']:>8.0f} {r['p99_us']:>8.0f} "
                             f"{r['requests_per_s']:>8,} {r['error_count']:>6} {r['sent_per_s']:>12,} "
                             f"{r['dropped_per_s']:>10,} {r['idle_pct']:>6}  {r['per_round_p99_us']}")
    if update:
        if lines:
            lines.append("")
        if update["count"]:
            lines.append(f"update latency, admin list-add reply -> first drop (ring-buffer timestamp), "
                         f"{update['count']} repetitions: min {update['min_us']} us, p50 {update['p50_us']} us, "
                         f"p99 {update['p99_us']} us, max {update['max_us']} us; under 1 ms (issue 23): "
                         f"{update['under_1ms']} of {update['count']}")
    return "\n".join(lines)


def run(a) -> int:
    check_args(a)
    why = missing()
    if why:
        print(f"bench.enforce: cannot run: {why}", file=sys.stderr)
        return 2
    from bench import enforce_update  # lazy: --help stays light
    from bench.netns import VethPair  # lazy: --help stays light

    interrupted = []

    def on_signal(signum, frame):           # the finally blocks below undo everything
        if not interrupted:                 # once: a second signal must not cut the clean-up short
            interrupted.append(signum)
            raise SystemExit(128 + signum)
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join(["python -m bench.enforce"] + sys.argv[1:]),
           "cpus": len(os.sched_getaffinity(0)), "loadavg_1m": round(os.getloadavg()[0], 2),
           "settings": {"duration_s": a.duration, "rounds": a.rounds, "warmup_s": a.warmup,
                        "clients": a.clients, "flood_pps": a.flood_pps, "flood_count": a.flood_count,
                        "update_reps": a.update_reps}}
    tmp = Path(tempfile.mkdtemp(prefix="risk-engine-bench-enforce-"))     # 0700
    rc, errors, samples = 0, [], []
    try:
        with VethPair() as net:
            s = Setup(net)
            try:
                if not a.no_flood:
                    doc["windows"] = run_flood(a, s, tmp)
                    errors += s.close()
                    s = Setup(net)
                if a.update_reps:
                    print("bench.enforce: starting an engine enforcing blocked_ips with XDP ...",
                          file=sys.stderr, flush=True)
                    eng = start_engine(net, tmp / "update", a.start_timeout, enforce=True)
                    s.engines.append(eng)
                    eng.start()
                    samples = enforce_update.measure(net, eng, net.other, a.update_reps, LIST)
            except (RuntimeError, OSError) as e:
                print(f"bench.enforce: {type(e).__name__}: {e}", file=sys.stderr)
                rc = 2
            finally:
                errors += s.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for sig, h in old.items():
            signal.signal(sig, h)
    for line in errors:
        print(f"bench.enforce: {line}", file=sys.stderr)
    doc["summary"] = aggregate(doc.get("windows", []))
    doc["update_latency"] = enforce_update.summary(samples) if a.update_reps else None
    doc["update_latency_us"] = [round(x.latency_us, 1) for x in samples]
    out = table(doc["summary"], doc["update_latency"])
    if out:
        print(out)
    print(f"note: {doc['cpus']} CPUs, load average {doc['loadavg_1m']} at the start (the CPU shares "
          "are the whole machine's, other work included)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"json: wrote {os.path.abspath(a.json)}")
    return rc or (2 if errors else 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.enforce", description=__doc__.split("\n")[0],
                                 epilog="Part by part: see the module's docstring and docs/EBPF.md.")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
