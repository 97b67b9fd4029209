"""The engine's status: its processes (admin ``status``, the metrics' process rows) and
status.json in the run directory, which `risk-engine status` and `risk-engine pin` read.

The supervisor rewrites status.json (atomically, 0600: shm.runtime.rundir.write_json) whenever
its content changes: at start, when a child is restarted, after a reload publishes a
generation, and when the standby is taken, retired or started again. Its loop compares every
20 ms.
"""
from __future__ import annotations

from shm.runtime import rundir


def processes(sup) -> list[dict]:
    """Every engine process of a supervisor. Also called by a metrics scrape on the
    exporter's thread while the loop replaces children and the standby: it reads each once,
    into a local."""
    rows = [{"role": "supervisor", "pid": sup.pid, "cpu": -1, "node": -1}]
    for role, p in list(sup.children.items()):
        cpu, node = -1, -1
        if role.startswith("worker"):
            pl = sup.placements[int(role.split()[1])]
            cpu, node = pl.cpu, pl.node
        elif role == "ingress" and sup.cfg.workers.ingress_cpu >= 0:
            cpu = sup.cfg.workers.ingress_cpu
            node = sup.topology.node(cpu)
        rows.append({"role": role, "pid": p.pid, "cpu": cpu, "node": node})
    sb = sup.standbys.process if sup.standbys is not None else None
    sidecar = sup.sidecar
    if sb is not None and sb.poll() is None:
        rows.append({"role": "standby", "pid": sb.pid, "cpu": -1, "node": -1})
    if sidecar is not None and sidecar.alive():
        rows.append({"role": "sidecar", "pid": sidecar.pid, "cpu": -1, "node": -1})
    return rows


def status_doc(sup) -> dict:
    """The status of a started supervisor: binds, the serving generation and ruleset, every
    engine process and the rings' segment names."""
    rs = sup.rulesets
    return {"instance": sup.cfg.instance, "bind": sup.cfg.ingress.bind,
            "metrics": sup.cfg.metrics.bind if sup.cfg.metrics.enabled else None,
            "admin": sup.admin.bind if sup.admin else None,
            "generation": rs.generation, "ruleset": rs.specs[rs.generation]["label"],
            "processes": processes(sup), "rings": [r.names() for r in sup.rings]}


class StatusFile:
    """status.json of one supervisor, rewritten only when its content changed."""

    def __init__(self):
        self.written: dict | None = None    # as last written

    def update(self, sup) -> None:
        st = status_doc(sup)
        if st != self.written:
            rundir.write_json(sup.run_dir, "status.json", st)
            self.written = st
