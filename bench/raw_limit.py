"""2a. The raw limit: aio-pika publishing persistent messages with confirms
into a durable queue and a consumer acking each one, in one process, on the
same broker, with messages the size of a benchmark task's. No database.

What our fleet adds on top (validation, a row per task, a second message
for its completion, the state write) is measured against this.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
import psutil
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from bench.context import BenchContext
from bench.fleet import server_cpu_seconds
from bench.measures import Throughput
from shared.ids import new_task_id
from shared.messages import TaskMessage, utcnow

QUEUE = "bench.raw"
PUBLISH_WINDOW = 500
PREFETCH = 100


def task_sized_body() -> bytes:
    """The bytes a `benchmark` task travels as on `tm.tasks`."""
    message = TaskMessage(task_id=new_task_id(), task_type="benchmark", kb_id="bench-raw-00000000",
                          retry_limit=3, created_at=utcnow())
    return message.model_dump_json().encode()


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


async def measure(ctx: BenchContext, n: int) -> tuple[Throughput, dict[str, float]]:
    """Answers the throughput and the CPU per message: this process (publisher
    and consumer) and the RabbitMQ node."""
    body = task_sized_body()
    connection = await aio_pika.connect(ctx.environment.amqp_url)
    try:
        publish_channel = await connection.channel(publisher_confirms=True)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=PREFETCH)
        queue = await consume_channel.declare_queue(QUEUE, durable=True)
        received = 0
        all_received = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if received >= n:
                all_received.set()

        tag = await queue.consume(on_message)
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def publish() -> None:
            async with window:
                await publish_channel.default_exchange.publish(
                    aio_pika.Message(body, content_type="application/json", delivery_mode=DeliveryMode.PERSISTENT),
                    QUEUE,
                )

        cpu_before = {"client": _own_cpu(), "rabbitmq": server_cpu_seconds(ctx.environment.postgres.db)["rabbitmq"]}
        started = time.perf_counter()
        publishing = asyncio.gather(*(publish() for _ in range(n)))
        timeout = ctx.budget(90)
        try:
            await asyncio.wait_for(asyncio.shield(all_received.wait()), timeout)
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - started
        cpu_after = {"client": _own_cpu(), "rabbitmq": server_cpu_seconds(ctx.environment.postgres.db)["rabbitmq"]}
        per_message = {k: (cpu_after[k] - cpu_before[k]) / max(received, 1) * 1e6 for k in cpu_after}
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        complete = received >= n
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        return Throughput(count=received, seconds=elapsed, complete=complete,
                          note="" if complete else f"time limit: {received:,} of {n:,} after {elapsed:.0f}s"), per_message
    finally:
        await connection.close()
