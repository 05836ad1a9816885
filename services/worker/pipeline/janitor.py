"""Dropping intermediate data nobody will read again.

The index stage drops a task's staging when the task completes. A task that
fails or is cancelled (even while queued between stages, when no stage runs
to notice) is cleaned up here, from its `task.failed`/`task.cancelled` event;
whatever is left behind anyway (a lost event) expires after
PIPELINE_STAGING_TTL_HOURS. Old embedding-cache entries expire too.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from loguru import logger

from services.worker.pipeline import staging
from shared.amqp.connection import connect
from shared.amqp.consumer import QueueConsumer
from shared.errors import PoisonMessage
from shared.messages import TaskEvent, parse_task_events
from shared.runtime import stop_task
from shared.settings import Settings
from shared.topology import EVENTS_EXCHANGE

SWEEP_SECONDS = 600.0
PIPELINE_TASK_TYPES = frozenset({"document_processing"})


class StagingJanitor:
    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self._settings = settings
        self._pool = pool
        self._connection: AbstractRobustConnection | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._consumer = QueueConsumer(self._on_event, what="failed and cancelled task events", no_ack=True)

    async def start(self) -> None:
        self._connection = await connect(self._settings.amqp, name="staging-janitor")
        await self._consumer.start(self._connection, _ended_events_queue)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        await stop_task(self._sweeper, "the staging janitor")
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            events = parse_task_events(message.body)
        except PoisonMessage:
            return
        for event in events:
            if event.task_type in PIPELINE_TASK_TYPES:
                await self._drop_staging(event)

    async def _drop_staging(self, event: TaskEvent) -> None:
        try:
            dropped = await staging.drop_task(self._pool, event.task_id)
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning("could not drop staging of {} task {}: {}", event.kind, event.task_id, exc)
            return
        if dropped:
            logger.info("dropped the intermediate data of {} task {}", event.kind, event.task_id)

    async def sweep(self) -> None:
        ttl = timedelta(hours=self._settings.pipeline.staging_ttl_hours)
        dropped = await staging.drop_older_than(self._pool, ttl)
        expired = await self._pool.execute(
            "DELETE FROM embedding_cache WHERE created_at < now() - $1::interval",
            timedelta(days=self._settings.embedding.cache_ttl_days))
        if dropped:
            logger.info("dropped the intermediate data of {} task run(s) older than {}", dropped, ttl)
        if expired != "DELETE 0":
            logger.info("expired embedding cache entries: {}", expired)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except (asyncpg.PostgresError, OSError) as exc:
                logger.warning("staging sweep failed: {}", exc)
            await asyncio.sleep(SWEEP_SECONDS)


async def _ended_events_queue(channel: AbstractChannel) -> AbstractQueue:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in ("task.failed", "task.cancelled"):
        await queue.bind(EVENTS_EXCHANGE, routing_key=key)
    return queue
