"""2. End to end: N no-op `benchmark` tasks submitted (over REST, and over the
AMQP `tm.submit` contract) until all N are `completed` in PostgreSQL.

The clock starts at the first submission and stops when the database shows
the last task completed (polled every 20 ms by counting the run's rows, which
carry a kb_id of their own).
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
import orjson
from aio_pika.abc import DeliveryMode

from bench.context import BENCH_BODY, BenchContext, run_tag
from bench.loadgen import run_load
from bench.measures import Throughput
from shared.topology import SUBMIT_QUEUE

POLL_SECONDS = 0.02
PUBLISH_WINDOW = 500  # tm.submit publishes awaiting their confirm at once

_COUNTS = """
SELECT count(*) FILTER (WHERE status = 'completed') AS done,
       count(*) FILTER (WHERE status IN ('failed', 'cancelled')) AS failed
FROM tasks WHERE kb_id = $1
"""


async def wait_completed(ctx: BenchContext, tag: str, n: int, started: float, timeout: float) -> Throughput:
    deadline = started + timeout
    done = failed = 0
    while True:
        row = await ctx.pg.fetchrow(_COUNTS, tag)
        done, failed = row["done"], row["failed"]
        now = time.perf_counter()
        if done + failed >= n or now > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    complete = done + failed >= n
    note = "" if complete else f"time limit: {done:,} of {n:,} completed after {now - started:.0f}s"
    return Throughput(count=done, seconds=now - started, errors=failed, complete=complete, note=note)


async def over_rest(ctx: BenchContext) -> tuple[Throughput, Throughput]:
    """Answers (end to end, submission alone)."""
    n, tag = ctx.sizes.e2e_tasks, run_tag("rest")
    started = time.perf_counter()
    submitting = asyncio.create_task(run_load(f"{ctx.fleet.api_url}/api/v1/tasks", n=n,
                                              concurrency=ctx.sizes.e2e_concurrency,
                                              body={**BENCH_BODY, "kb_id": tag}, generator=ctx.loadgen))
    result = await wait_completed(ctx, tag, n, started, ctx.budget(120))
    return result, await submitting


async def over_amqp(ctx: BenchContext) -> tuple[Throughput, Throughput]:
    """Publishes the REST body to `tm.submit` with confirms (persistent), as a
    publishing service would. Answers (end to end, submission alone)."""
    n, tag = ctx.sizes.e2e_tasks, run_tag("amqp")
    body = orjson.dumps({**BENCH_BODY, "kb_id": tag})
    connection = await aio_pika.connect(ctx.environment.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        window = asyncio.Semaphore(PUBLISH_WINDOW)
        refused = 0

        async def publish() -> None:
            nonlocal refused
            async with window:
                message = aio_pika.Message(body, content_type="application/json",
                                           delivery_mode=DeliveryMode.PERSISTENT)
                try:
                    await channel.default_exchange.publish(message, SUBMIT_QUEUE)
                except aio_pika.exceptions.DeliveryError:
                    refused += 1

        started = time.perf_counter()

        async def submit_all() -> Throughput:
            await asyncio.gather(*(publish() for _ in range(n)))
            return Throughput(count=n, seconds=time.perf_counter() - started, errors=refused)

        submitting = asyncio.create_task(submit_all())
        result = await wait_completed(ctx, tag, n, started, ctx.budget(120))
        return result, await submitting
    finally:
        await connection.close()
