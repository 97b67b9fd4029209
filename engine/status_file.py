"""status.json in the run directory: what `risk-engine status` and `risk-engine pin` read.

The supervisor rewrites it (atomically, 0600: shm.runtime.rundir.write_json) whenever its
content changes: at start, when a child is restarted, after a reload publishes a generation,
and when the standby is taken, retired or started again. Its loop compares every 20 ms.
"""
from __future__ import annotations


def status_doc(sup) -> dict:
    """The status of a started supervisor: binds, the serving generation and ruleset, every
    engine process (Supervisor.status) and the rings' segment names."""
    rs = sup.rulesets
    return {"instance": sup.cfg.instance, "bind": sup.cfg.ingress.bind,
            "metrics": sup.cfg.metrics.bind if sup.cfg.metrics.enabled else None,
            "admin": sup.admin.bind if sup.admin else None,
            "generation": rs.generation, "ruleset": rs.specs[rs.generation]["label"],
            "processes": sup.status(), "rings": [r.names() for r in sup.rings]}
