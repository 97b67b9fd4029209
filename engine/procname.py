"""Process titles: every engine process names itself `risk-engine: <role>` so that `ps`,
`pgrep -f` and scripts/pin_workers.sh can tell them apart."""
from __future__ import annotations

PREFIX = "risk-engine: "


def set_role(role: str) -> None:
    try:
        import setproctitle
        setproctitle.setproctitle(PREFIX + role)
    except ImportError:       # pragma: no cover - setproctitle is an install requirement
        pass
