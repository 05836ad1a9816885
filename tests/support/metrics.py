"""Reading a process's /metrics the way Prometheus does."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fleet import Process


@dataclass(frozen=True)
class Scrape:
    samples: tuple[tuple[str, dict[str, str], float], ...]
    families: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        families = list(text_string_to_metric_families(text))
        samples = tuple((s.name, dict(s.labels), s.value) for f in families for s in f.samples)
        return cls(samples, frozenset(f.name for f in families) | {s[0] for s in samples})

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return sum(v for n, lab, v in self.samples if n == name and labels.items() <= lab.items())

    def has(self, name: str, **labels: str) -> bool:
        return any(n == name and labels.items() <= lab.items() for n, lab, _ in self.samples)


def metrics_url(process: Process) -> str:
    assert process.ready_url is not None
    return process.ready_url.replace("/health/ready", "/metrics")


async def scrape(http: aiohttp.ClientSession, url: str) -> Scrape:
    async with http.get(url) as response:
        assert response.status == 200, url
        return Scrape.parse(await response.text())
