"""1. Ingress: `POST /api/v1/tasks` under closed-loop load, beside the same
load against a bare aiohttp handler (the framework's limit here).

The api runs alone for this (workers and dispatcher not started yet), so the
figure is the api's own capacity, not the share of two cores left to it by the
rest of the fleet; the end-to-end section measures the fleet together.
"""

from __future__ import annotations

import sys

from bench.context import BENCH_BODY, BenchContext
from bench.fleet import FleetProcess
from bench.loadgen import run_load
from bench.measures import Throughput
from bench.report import Row, Section, number, ratio, verdict
from tests.support.environment import free_port

# Issue 13's targets, as ratios taken in the same run.
TARGET_RATIO_TO_BARE = 0.2
TARGET_P99_MS = 25.0
TARGET_CONCURRENCY = 10
BATCH_ITEMS = 100
BATCH_CONCURRENCY = 4
TARGET_BATCH_TASKS_PER_SECOND = 10_000


def describe(result: Throughput) -> str:
    return (f"{number(result.rate)} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
            f"{result.errors} errors")


async def measure(ctx: BenchContext) -> Section:
    sizes = ctx.sizes
    port = free_port()
    bare = FleetProcess("bare-aiohttp", [sys.executable, "-m", "bench.bare_server", str(port)],
                        ctx.environment.process_env(), f"http://127.0.0.1:{port}/health/ready",
                        ctx.log_dir / "bare-aiohttp.log")
    await bare.start()
    try:
        baselines = {c: await run_load(f"http://127.0.0.1:{port}/api/v1/tasks", n=sizes.ingress_requests,
                                       concurrency=c, body=BENCH_BODY, generator=ctx.loadgen)
                     for c in sizes.ingress_concurrency}
    finally:
        bare.stop()

    single: Throughput | None = None
    section = Section(f"1. Ingress: POST /api/v1/tasks, {sizes.ingress_requests:,} requests (load: {ctx.loadgen})")
    for concurrency in sizes.ingress_concurrency:
        ours = await run_load(f"{ctx.fleet.api_url}/api/v1/tasks", n=sizes.ingress_requests,
                              concurrency=concurrency, body=BENCH_BODY, generator=ctx.loadgen)
        base = baselines[concurrency]
        if concurrency == TARGET_CONCURRENCY:
            target = f"≥ {TARGET_RATIO_TO_BARE}× bare aiohttp, p99 < {TARGET_P99_MS:.0f} ms, 0 errors"
            met = verdict(ours.rate >= TARGET_RATIO_TO_BARE * base.rate and ours.p99_ms < TARGET_P99_MS
                          and ours.errors == 0)
        else:
            target, met = "0 errors", verdict(ours.errors == 0)
        section.rows.append(Row(f"api, concurrency {concurrency}", describe(ours),
                                f"bare aiohttp: {describe(base)}", ratio(ours.rate, base.rate), target, met))
        if concurrency == TARGET_CONCURRENCY:
            single = ours
    section.rows.append(await _batches(ctx, single))
    section.notes.append(
        f"Batches: {BATCH_ITEMS} tasks per POST /api/v1/tasks/batch, {BATCH_CONCURRENCY} calls at a time. "
        "The api runs alone here (the end-to-end section runs the whole fleet); each 201 means the row "
        "committed and RabbitMQ confirmed the persistent message. Bare aiohttp answers 201 without doing anything."
    )
    return section


async def _batches(ctx: BenchContext, single: Throughput | None) -> Row:
    """The same tasks, 100 per call: what the batch endpoint admits per second."""
    calls = max(1, ctx.sizes.ingress_requests // BATCH_ITEMS)
    concurrency = min(BATCH_CONCURRENCY, calls)  # hey refuses fewer requests than workers
    result = await run_load(f"{ctx.fleet.api_url}/api/v1/tasks/batch", n=calls, concurrency=concurrency,
                            body={"tasks": [BENCH_BODY] * BATCH_ITEMS}, generator=ctx.loadgen)
    tasks_per_second = result.rate * BATCH_ITEMS
    return Row(f"api, batches of {BATCH_ITEMS} ({calls:,} calls, concurrency {concurrency})",
               f"{number(tasks_per_second)} tasks/s, p99 {result.p99_ms:.1f} ms per call, {result.errors} errors",
               f"single submissions at concurrency {TARGET_CONCURRENCY}: {number(single.rate)} tasks/s"
               if single else "", ratio(tasks_per_second, single.rate) if single else "", f"≥ {TARGET_BATCH_TASKS_PER_SECOND:,} tasks/s, 0 errors",
               verdict(tasks_per_second >= TARGET_BATCH_TASKS_PER_SECOND and result.errors == 0))
