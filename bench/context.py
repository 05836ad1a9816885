"""What every section gets: the sizes of this run, the isolated environment,
our fleet, a database pool, and the time left."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.environment import BenchEnvironment
from bench.fleet import Fleet

BENCH_BODY = {"task_type": "benchmark", "payload": {}}


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does. The full run is the issue's; the
    quick one (`--quick`, the test suite's smoke test) only proves the harness works."""

    ingress_requests: int = 10_000
    ingress_concurrency: tuple[int, ...] = (10, 50)
    e2e_tasks: int = 10_000
    e2e_concurrency: int = 50
    latency_tasks: int = 200
    quick: bool = False


FULL = Sizes()
QUICK = Sizes(ingress_requests=200, ingress_concurrency=(10,), e2e_tasks=200, e2e_concurrency=10,
              latency_tasks=5, quick=True)


@dataclass
class BenchContext:
    sizes: Sizes
    environment: BenchEnvironment
    fleet: Fleet
    pg: asyncpg.Pool
    log_dir: Path
    deadline: float  # time.monotonic() by which the whole run must be over
    loadgen: str  # "hey" or "aiohttp"
    skip: frozenset[str] = frozenset()

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def budget(self, seconds: float) -> float:
        """A step's time limit: `seconds`, or less when the run's deadline is nearer."""
        return max(1.0, min(seconds, self.time_left() - 20))


def run_tag(kind: str) -> str:
    """A kb_id that marks the tasks of one measurement, so each counts only its own."""
    import uuid

    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


def path_of(name: str) -> Path:
    return Path(__file__).resolve().parent / name
