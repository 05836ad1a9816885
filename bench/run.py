"""The whole comparison in one run, in an order that keeps it fair:

1. the api alone: start-to-ready, idle RSS, ingress beside bare aiohttp;
2. dispatcher and worker join (start-to-ready, idle RSS); end to end over
   REST and over tm.submit while RSS is sampled; latency at low load;
3. our fleet stopped: the raw aio-pika limit, Celery, Dramatiq, each alone;
4. the pipeline section (or its "pending" row).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
from loguru import logger

from bench import competitors, end_to_end, ingress, latency, raw_limit, sections
from bench.context import FULL, QUICK, BenchContext
from bench.environment import create_environment, destroy_environment
from bench.fleet import Fleet
from bench.loadgen import generator_name
from bench.machine import describe
from bench.profiling import Profiler, summarize
from bench.report import Row, Section, render_results, write_benchmarks
from shared.db.local_server import connect_kwargs
from shared.topology import stage_queue

SETTLE_SECONDS = 1.0  # after start, before "idle" RSS is read
STEPS = ("ingress", "e2e", "latency", "raw", "celery", "dramatiq", "pipeline", "shards")


@dataclass(frozen=True)
class Options:
    quick: bool = False
    output: Path | None = None
    time_limit: float = 570.0  # seconds; `make bench` promises 10 minutes, teardown included
    skip: frozenset[str] = frozenset()
    profile: Path | None = None
    fleet_env: dict[str, str] = field(default_factory=dict)
    command: str = "make bench"


async def run(options: Options) -> str:
    started = time.monotonic()
    sizes = QUICK if options.quick else FULL
    log_dir = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    logger.info("benchmark logs in {}", log_dir)
    environment = await create_environment()
    pg = await asyncpg.create_pool(**connect_kwargs(environment.postgres), min_size=1, max_size=4)  # type: ignore[arg-type]
    fleet = Fleet(environment, log_dir)
    ctx = BenchContext(sizes, environment, fleet, pg, log_dir, started + options.time_limit, generator_name(),
                       options.skip)
    try:
        postgres_version = await pg.fetchval("SHOW server_version")
        header = describe(f"PostgreSQL {postgres_version}")
        found = await _measure(ctx, options)
    finally:
        fleet.stop()
        await pg.close()
        await destroy_environment(environment)
    header += [(f"- run: `{options.command}` ({'quick' if sizes.quick else 'full'} sizes), "
                f"{time.monotonic() - started:.0f} s in all; load generator: {ctx.loadgen}")]
    if options.fleet_env:
        header.append("- fleet settings: " + ", ".join(f"{k}={v}" for k, v in sorted(options.fleet_env.items())))
    results = render_results(found, header)
    if options.output is not None:
        write_benchmarks(options.output, results)
    return results


async def _measure(ctx: BenchContext, options: Options) -> list[Section]:
    fleet, sizes, skip = ctx.fleet, ctx.sizes, ctx.skip
    env = options.fleet_env
    found: list[Section] = []

    api = fleet.api(**env)
    await api.start()
    await asyncio.sleep(SETTLE_SECONDS)
    api.read_idle_memory()
    if "ingress" not in skip:
        logger.info("ingress")
        found.append(await ingress.measure(ctx))
        await _purge_stage_queue(ctx)

    for process in (fleet.dispatcher(**env), fleet.worker(**env)):
        await process.start()
    await asyncio.sleep(SETTLE_SECONDS)
    for process in fleet.processes.values():
        if process.name != "api":
            process.read_idle_memory()

    rest = amqp = None
    if "e2e" not in skip:
        fleet.start_sampling()
        profiler = Profiler(options.profile) if options.profile and Profiler.available() else None
        if profiler:
            profiler.start(list(fleet.processes.values()))
        logger.info("end to end over REST")
        rest = await end_to_end.over_rest(ctx)
        if profiler:
            profiler.stop()
            for folded in sorted(profiler.directory.glob("*.folded")):
                logger.info("profile:\n{}", summarize(folded))
        logger.info("end to end over tm.submit")
        amqp = await end_to_end.over_amqp(ctx)
        await fleet.stop_sampling()
    if "latency" not in skip:
        logger.info("latency")
        found_latency = sections.latency(*await latency.measure(ctx))
    fleet.stop()

    if rest is not None and amqp is not None:
        raw = await _guarded("raw", ctx, lambda: raw_limit.measure(ctx, sizes.e2e_tasks))
        celery = await _competitor("celery_bench", ctx)
        dramatiq = await _competitor("dramatiq_bench", ctx)
        found.append(sections.end_to_end(sizes.e2e_tasks, rest, amqp, raw, celery, dramatiq))
    if "latency" not in skip:
        found.append(found_latency)
    found.append(sections.resources(fleet))
    if "pipeline" not in skip:
        found.append(await sections.pipeline(ctx))
    if "shards" not in skip:
        found.append(await _guarded_section("shards", ctx, lambda: sections.sharding(ctx)))
    return found


async def _competitor(runner: str, ctx: BenchContext) -> competitors.CompetitorResult | str:
    name = runner.removesuffix("_bench")
    if name in ctx.skip:
        return sections.skipped("--skip " + name)
    if (package := competitors.missing(runner)) is not None:
        return sections.skipped(f"{package} is not installed (pip install -e '.[bench]')")
    return await _guarded(name, ctx, lambda: competitors.run(runner, ctx, ctx.sizes.e2e_tasks, ctx.budget(150)))


async def _guarded(name: str, ctx: BenchContext, measure):  # type: ignore[no-untyped-def]
    """One comparison failing (or skipped) leaves the rest of the table intact."""
    if name in ctx.skip:
        return sections.skipped("--skip " + name)
    if ctx.time_left() < 30:
        return sections.skipped("no time left within the run's limit")
    logger.info(name)
    try:
        return await measure()
    except Exception as exc:  # noqa: BLE001 - reported in the table instead
        logger.opt(exception=exc).error("{} failed", name)
        return f"failed: {type(exc).__name__}: {exc}"[:300]


async def _guarded_section(name: str, ctx: BenchContext, measure) -> Section:  # type: ignore[no-untyped-def]
    """A whole section under `_guarded`: a failure or a skip becomes its one row."""
    found = await _guarded(name, ctx, measure)
    return found if isinstance(found, Section) else Section(name, [Row(name, found)])


async def _purge_stage_queue(ctx: BenchContext) -> None:
    """Drop the ingress backlog so the end-to-end runs measure only their own tasks."""
    connection = await aio_pika.connect(ctx.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(stage_queue("default"), passive=True)
        with contextlib.suppress(Exception):
            await queue.purge()
