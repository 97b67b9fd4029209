"""Scrape a Prometheus endpoint and index its samples (parsed by prometheus_client.parser)."""
from __future__ import annotations

import functools
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Samples(dict):
    """{(sample_name, frozenset(labels)): value}, with a label-subset lookup."""

    def get1(self, name: str, **labels) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0.0 if none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and want <= ls)

    def delta(self, before: "Samples", name: str, **labels) -> float:
        return self.get1(name, **labels) - before.get1(name, **labels)


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        text = r.read().decode()
    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


class Exposition:
    """What one real engine's /metrics exposes: every family name as Prometheus stores it
    (counters with ``_total``), its type, and the values seen per label name."""

    def __init__(self, text: str):
        self.types: dict[str, str] = {}
        self.labels: dict[str, dict[str, set[str]]] = {}
        self.samples = Samples()
        for fam in text_string_to_metric_families(text):
            name = fam.name + ("_total" if fam.type == "counter" else "")
            self.types[name] = fam.type
            seen = self.labels.setdefault(name, {})
            for s in fam.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value
                for k, v in s.labels.items():
                    seen.setdefault(k, set()).add(v)

    def family_of(self, series: str) -> str | None:
        """The family a series name selects (histogram _bucket/_count/_sum stripped), or None."""
        if series in self.types:
            return series
        for suffix in ("_bucket", "_count", "_sum"):
            base = series[: -len(suffix)] if series.endswith(suffix) else None
            if base and self.types.get(base) == "histogram":
                return base
        return None


def engine_exposition() -> Exposition:
    """/metrics of a real engine (two workers) after one binary and one JSON request, so
    every labelled family has samples. One engine per test session: it is started on the
    first call, scraped and stopped at once (nothing is left running). A start that failed
    is not retried by every later caller: they get the same error at once."""
    result = _engine_exposition()
    if isinstance(result, Exception):
        raise RuntimeError(f"the scraped engine did not start: {result}") from result
    return result


@functools.lru_cache(maxsize=None)
def _engine_exposition() -> Exposition | Exception:
    try:
        return _scrape_engine()
    except Exception as e:          # not BaseException: Ctrl-C and a test timeout still stop the run
        return e


def _scrape_engine() -> Exposition:
    # here: test_sidecar imports this module for scrape() alone, without numpy or the engine
    import numpy as np
    from bench.engine_proc import EngineProcess
    from bench.events import random_events
    from ingress.client import Client
    from shm.runtime.config import load_config
    schema = load_config().schema
    recs = random_events(np.random.default_rng(25), schema, 2)
    with EngineProcess(workers=2, overrides={"ingress": {"default_deadline_ms": 10_000}}) as eng:
        for transport in ("binary", "json"):
            with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0,
                        transport=transport) as c:
                c.evaluate_batch(recs)
        with urllib.request.urlopen(eng.metrics_url, timeout=10) as r:
            return Exposition(r.read().decode())
