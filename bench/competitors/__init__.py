"""Celery and Dramatiq running the same no-op task on the same RabbitMQ, each
in its own runner process (`python -m bench.competitors.<name>`), which
starts the framework's own worker, submits N tasks, waits until all of them
ran, and prints one JSON line. Benchmark-only dependencies (the `bench`
extra): the product never imports them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from dataclasses import dataclass

import orjson

from bench.context import BenchContext
from bench.measures import Throughput

# What each runner needs importable, beside its own module.
REQUIREMENTS = {"celery_bench": ("celery", "psycopg2"), "dramatiq_bench": ("dramatiq", "pika")}


@dataclass(frozen=True)
class CompetitorResult:
    throughput: Throughput
    ready_seconds: float
    peak_rss_mb: float
    processes: int
    cpu_us_per_task: dict[str, float]  # worker (the framework's processes), postgres, rabbitmq


def missing(runner: str) -> str | None:
    """The first package the runner needs that is not installed, if any."""
    return next((p for p in REQUIREMENTS[runner] if importlib.util.find_spec(p) is None), None)


async def run(runner: str, ctx: BenchContext, n: int, timeout: float) -> CompetitorResult:
    env = ctx.environment.process_env(
        BENCH_BROKER_URL=ctx.environment.amqp_url,
        BENCH_DATABASE_URL=ctx.environment.dsn(),
        BENCH_DATABASE_NAME=ctx.environment.postgres.db,
        BENCH_LOG_DIR=str(ctx.log_dir),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"bench.competitors.{runner}", "--n", str(n), "--timeout", f"{timeout:.0f}",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=open(ctx.log_dir / f"{runner}.log", "ab"),  # noqa: SIM115, ASYNC230
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout + 90)
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"{runner} did not finish; see {ctx.log_dir / (runner + '.log')}") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{runner} failed ({proc.returncode}); see {ctx.log_dir / (runner + '.log')}")
    data = orjson.loads(lines[-1])
    throughput = Throughput(count=data["count"], seconds=data["seconds"], complete=data["count"] >= n,
                            note="" if data["count"] >= n else f"time limit: {data['count']:,} of {n:,}")
    per_task = {k: v / max(data["count"], 1) * 1e6 for k, v in data["cpu_seconds"].items()}
    return CompetitorResult(throughput, data["ready_seconds"], data["peak_rss"] / 1024**2, data["processes"], per_task)
