"""2. End to end: N no-op `benchmark` tasks submitted (over REST, and over the
AMQP `tm.submit` contract) until all N are `completed` in PostgreSQL.

The clock starts at the first submission and stops when the database shows
the last task completed (polled every 20 ms by counting the run's rows, which
carry a kb_id of their own).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aio_pika
import orjson
from aio_pika.abc import DeliveryMode

from bench.context import BENCH_BODY, BenchContext, run_tag
from bench.loadgen import run_load
from bench.measures import Throughput
from shared.topology import SUBMIT_QUEUE

POLL_SECONDS = 0.02
PUBLISH_WINDOW = 500  # tm.submit publishes awaiting their confirm at once

@dataclass(frozen=True)
class EndToEnd:
    result: Throughput  # submitted to completed in PostgreSQL
    submission: Throughput  # submission alone
    cpu_us_per_task: dict[str, float]  # by process (api, worker, dispatcher, postgres, rabbitmq)


class CpuMeter:
    """CPU time each process spent during a run, per task completed: steadier
    than throughput on a shared machine, where others take the CPU."""

    def __init__(self, ctx: BenchContext) -> None:
        self._ctx = ctx
        self._before = ctx.fleet.cpu_seconds()

    def per_task(self, tasks: int) -> dict[str, float]:
        after = self._ctx.fleet.cpu_seconds()
        return {name: (after[name] - self._before.get(name, 0.0)) / max(tasks, 1) * 1e6 for name in after}


_COUNTS = """
SELECT count(*) FILTER (WHERE status = 'completed') AS done,
       count(*) FILTER (WHERE status IN ('failed', 'cancelled')) AS failed
FROM tasks WHERE kb_id = $1
"""


async def wait_completed(ctx: BenchContext, tag: str, n: int, started: float, timeout: float,
                         submitting: asyncio.Task[Throughput]) -> Throughput:
    """Polls until every accepted task ended: a refused submission never
    becomes a task, so waiting for it would only run into the time limit."""
    deadline = started + timeout
    done = failed = 0
    expected = n
    while True:
        if submitting.done():
            expected = n - submitting.result().errors
        row = await ctx.pg.fetchrow(_COUNTS, tag)
        done, failed = row["done"], row["failed"]
        now = time.perf_counter()
        if done + failed >= expected or now > deadline:
            break
        await asyncio.sleep(POLL_SECONDS)
    refused = n - expected
    complete = done + failed >= n
    notes = [f"{refused:,} submissions refused"] if refused else []
    if done + failed < expected:
        notes.append(f"time limit: {done:,} of {n:,} completed after {now - started:.0f}s")
    return Throughput(count=done, seconds=now - started, errors=failed, complete=complete, note="; ".join(notes))


async def over_rest(ctx: BenchContext) -> EndToEnd:
    n, tag = ctx.sizes.e2e_tasks, run_tag("rest")
    meter = CpuMeter(ctx)
    started = time.perf_counter()
    submitting = asyncio.create_task(run_load(f"{ctx.fleet.api_url}/api/v1/tasks", n=n,
                                              concurrency=ctx.sizes.e2e_concurrency,
                                              body={**BENCH_BODY, "kb_id": tag}, generator=ctx.loadgen))
    result = await wait_completed(ctx, tag, n, started, ctx.budget(120), submitting)
    submission = await submitting
    return EndToEnd(result, submission, meter.per_task(result.count))


async def over_amqp(ctx: BenchContext) -> EndToEnd:
    """Publishes the REST body to `tm.submit` with confirms (persistent), as a
    publishing service would."""
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

        meter = CpuMeter(ctx)
        started = time.perf_counter()

        async def submit_all() -> Throughput:
            await asyncio.gather(*(publish() for _ in range(n)))
            return Throughput(count=n, seconds=time.perf_counter() - started, errors=refused)

        submitting = asyncio.create_task(submit_all())
        result = await wait_completed(ctx, tag, n, started, ctx.budget(120), submitting)
        submission = await submitting
        return EndToEnd(result, submission, meter.per_task(result.count))
    finally:
        await connection.close()
