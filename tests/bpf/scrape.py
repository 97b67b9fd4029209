"""Scrape a Prometheus endpoint and index its samples (parsed by prometheus_client.parser)."""
from __future__ import annotations

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
