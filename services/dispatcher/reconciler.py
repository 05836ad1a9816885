"""Finds tasks whose messages are gone (a stage queue purged in the management
UI, a message lost) and fails them with a clear error, keeping a copy in
`tm.dead` so `taskmgr dlq replay` runs them again on purpose.

Failed, not re-published: a broker cannot tell us cheaply that no queue holds a
task's message, only that a task has been silent far past its time and its
stage queue is empty. Re-publishing on that guess runs the task twice whenever
the guess is wrong; failing it is safe, because a message of the failed run
that turns up later is refused by the workers ("task already finished; use
replay", decision 0071). See docs/decisions/0072-reconciling-lost-messages.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aio_pika.abc import AbstractRobustConnection
from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import metrics
from shared.amqp.dead_letter import dead_letter_headers
from shared.amqp.publisher import Publisher
from shared.messages import ErrorInfo, TaskFailed, TaskMessage, utcnow
from shared.runtime import stop_task
from shared.settings import DispatcherSettings
from shared.task_types import TaskTypeRegistry
from shared.topology import DISPATCHER_EVENTS_QUEUE, stage_queue

# Whichever dispatcher holds this lock reconciles; the others skip the round.
_LOCK_KEY = 0x746D_7265_636F  # "tmreco"

_STALE = text("""
SELECT CAST(id AS text) AS id, run, task_type, kb_id, payload, priority, retry_limit, timeout_seconds,
       created_at, status, stage, attempts, updated_at
FROM tasks
WHERE status IN ('queued', 'processing')
  AND updated_at < now() - make_interval(secs => :stale)
  AND (next_attempt_at IS NULL OR next_attempt_at < now() - make_interval(secs => :stale))
  -- Waiting for a concurrency slot: its message is in PostgreSQL, not lost (decision 0160).
  AND NOT EXISTS (SELECT 1 FROM concurrency_waiting w WHERE w.task_id = tasks.id)
ORDER BY updated_at
LIMIT :limit
""")

BATCH = 500


class LostMessageReconciler:
    def __init__(self, engine: AsyncEngine, connection: AbstractRobustConnection, publisher: Publisher,
                 registry: TaskTypeRegistry, settings: DispatcherSettings) -> None:
        self._engine = engine
        self._connection = connection
        self._publisher = publisher
        self._registry = registry
        self._interval = settings.reconciler_interval_seconds
        self._stale = settings.reconciler_stale_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._stale > 0:
            self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def stop(self) -> None:
        await stop_task(self._task, "the lost-message reconciler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("could not reconcile tasks with lost messages: {}", exc)

    async def reconcile(self) -> int:
        """One round; answers how many tasks it failed."""
        async with self._engine.begin() as conn:
            if not (await conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})).scalar():
                return 0
            rows = (await conn.execute(_STALE, {"stale": self._stale, "limit": BATCH})).all()
            if not rows:
                return 0
            # Every stage of the task: after `stage_completed` the row still names the
            # stage that finished while the message waits in the next one's queue.
            waiting = await self._queue_depths({s for r in rows for s in self._stages(r)})
            lost = [r for r in rows if r.stage and all(waiting.get(s) == 0 for s in self._stages(r))]
            for row in lost:
                await self._fail(row)
            return len(lost)

    def _stages(self, row: Any) -> tuple[str, ...]:
        if row.task_type in self._registry:
            return self._registry[row.task_type].stages
        return (row.stage,) if row.stage else ()

    async def _queue_depths(self, stages: set[str]) -> dict[str, int]:
        """Messages ready in each stage queue; a stage with some may still hold the
        task's message (a backlog), so its tasks are left alone this round."""
        depths: dict[str, int] = {}
        channel = await self._connection.channel()
        try:
            for stage in stages:
                with contextlib.suppress(Exception):
                    queue = await channel.declare_queue(stage_queue(stage), passive=True)
                    depths[stage] = int(queue.declaration_result.message_count or 0)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return depths

    async def _fail(self, row: Any) -> None:
        silent = (utcnow() - row.updated_at).total_seconds()
        reason = (f"no message for this task in any queue: it was {row.status} for {silent:.0f}s with its stage "
                  f"queue {stage_queue(row.stage)} empty (purged, or the message was lost); "
                  f"run it again with `taskmgr dlq replay {row.id}`")
        stages = self._stages(row)
        message = TaskMessage(task_id=row.id, run=row.run, task_type=row.task_type, kb_id=row.kb_id,
                              payload=row.payload or {}, priority=row.priority, retry_limit=row.retry_limit,
                              timeout_seconds=row.timeout_seconds, created_at=row.created_at, stages=stages,
                              stage=stages[0])
        headers = dead_letter_headers(reason, source_queue=stage_queue(row.stage), stage=row.stage,
                                      attempts=row.attempts)
        await self._publisher.dead(message.model_dump_json().encode(), headers=headers, routing_key=row.stage)
        failed = TaskFailed(
            task_id=row.id, run=row.run, task_type=row.task_type, kb_id=row.kb_id, stage=row.stage,
            attempt=max(1, row.attempts), finished_at=utcnow(), dead_lettered=True,
            error=ErrorInfo(type="message_lost", message=reason, stage=row.stage))
        # Straight into the dispatcher's own event queue (the dispatcher may not write
        # tm.events, decision 0037): the same fold, write, outbox and finished broadcast.
        await self._publisher.publish("", DISPATCHER_EVENTS_QUEUE, failed.model_dump_json().encode(),
                                      message_id=failed.event_id)
        metrics.tasks_dead_lettered_total.labels("message_lost").inc()
        logger.bind(task_id=row.id, task_type=row.task_type, stage=row.stage).error(
            "failed a task whose message is gone: {}", reason)
