"""Consumes `tm.dispatcher.events` in batches: fold, write in one transaction,
then ack the whole batch at once (`multiple=True`). Nothing is acked before
its write committed; while the database is down, events wait in the queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import backoff
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from backoff.types import Details
from loguru import logger

from services.dispatcher.event_log import EventLog
from services.dispatcher.finished_broadcast import announce_finished
from services.dispatcher.state_fold import fold
from services.dispatcher.state_writer import Ended, TaskStateWriter
from shared import metrics
from shared.amqp.consumer import QueueConsumer
from shared.amqp.dead_letter import dead_letter_headers
from shared.amqp.publisher import Publisher
from shared.db.errors import DB_ERRORS
from shared.errors import PoisonMessage, Unavailable
from shared.messages import EVENT_STATUS, CancelTask, TaskEvent, parse_task_events, utcnow
from shared.runtime import stop_task
from shared.settings import DispatcherSettings
from shared.status import TaskStatus
from shared.topology import DISPATCHER_EVENTS_QUEUE, Topology, declare_queue


class EventConsumer:
    def __init__(
        self,
        writer: TaskStateWriter,
        publisher: Publisher,
        settings: DispatcherSettings,
        *,
        on_callbacks_queued: Callable[[], None],
        event_log: EventLog | None = None,
    ) -> None:
        self._writer = writer
        self._event_log = event_log
        self._publisher = publisher
        self._batch_max = settings.batch_max_events
        self._batch_wait = settings.batch_max_wait_seconds
        self._on_callbacks_queued = on_callbacks_queued
        self._buffer: list[AbstractIncomingMessage] = []
        self._wakeup = asyncio.Event()
        self._consumer = QueueConsumer(self._on_message, what=DISPATCHER_EVENTS_QUEUE,
                                       prefetch=self._batch_max * 2)
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.database_healthy = True

    async def start(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        await self._consumer.start(connection, lambda ch: declare_queue(ch, topology, DISPATCHER_EVENTS_QUEUE))
        self._loop_task = asyncio.create_task(self._run(), name="event-batches")

    async def stop(self) -> None:
        """Stop consuming, finish the batch being written, leave the rest unacked."""
        self._stopping = True
        await self._consumer.cancel()
        await stop_task(self._loop_task, "the event batch loop")
        await self._consumer.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika runs every consumer callback as a task; a plain function would only be wrapped
        # in one (with a DeprecationWarning per message), so this is a coroutine doing no I/O.
        self._buffer.append(message)
        self._wakeup.set()

    async def _run(self) -> None:
        # Under load (events kept arriving while the last batch was written) a
        # batch lingers up to DISPATCHER_BATCH_WAIT to grow: each write costs the
        # same whatever its size. An idle dispatcher writes the first event at once.
        under_load = False
        while True:
            await self._wakeup.wait()
            if under_load and len(self._buffer) < self._batch_max and self._batch_wait:
                await asyncio.sleep(self._batch_wait)
            batch, self._buffer = self._buffer[: self._batch_max], self._buffer[self._batch_max :]
            if not self._buffer:
                self._wakeup.clear()
            if not batch:
                continue
            try:
                await asyncio.shield(self._handle(batch))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - never stop consuming; the batch comes back
                logger.exception("could not handle a batch of {} events; requeueing it", len(batch))
                with contextlib.suppress(Exception):
                    await batch[-1].nack(multiple=True, requeue=True)
                await asyncio.sleep(1)
            under_load = bool(self._buffer)

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        events: list[TaskEvent] = []
        for message in batch:
            try:
                events.extend(parse_task_events(message.body))  # one event, or a worker's batch
            except PoisonMessage as exc:
                await self._dead_letter(message, exc.message)
        ended, stale_cancelled = await self._write(events) if events else ([], [])
        try:
            await batch[-1].ack(multiple=True)
        except Exception as exc:  # noqa: BLE001 - channel lost: the broker redelivers; writes are idempotent
            logger.warning("could not ack {} events ({}); they will be redelivered", len(batch), exc)
        self._record(events, ended)
        await announce_finished(self._publisher, events, ended)
        if any(e.callback_queued for e in ended):
            self._on_callbacks_queued()
        for task_id, run in stale_cancelled:
            with contextlib.suppress(Unavailable):
                await self._publisher.control(CancelTask(task_id=task_id, run=run, reason="cancelled before it ran"))

    async def _write(self, events: list[TaskEvent]) -> tuple[list[Ended], list[tuple[str, int]]]:
        deltas = fold(events)

        def unhealthy(details: Details) -> None:
            self.database_healthy = False
            logger.warning("database write failed ({}); retrying in {:.1f}s", details.get("exception"), details["wait"])

        async def log_and_apply() -> tuple[list[Ended], list[tuple[str, int]]]:
            if self._event_log is not None:  # idempotent on its own: a retry appends nothing twice
                await self._event_log.append(events)
            return await self._writer.apply(deltas)

        write = backoff.on_exception(
            backoff.expo, DB_ERRORS, max_value=5, giveup=lambda _: self._stopping, on_backoff=unhealthy, logger=None
        )(log_and_apply)
        result = await write()
        if not self.database_healthy:
            logger.info("database writes recovered")
        self.database_healthy = True
        return result

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        logger.error("dead-lettering an event that cannot be parsed: {}", reason)
        headers = dead_letter_headers(reason, source_queue=DISPATCHER_EVENTS_QUEUE, original=message.headers)
        await self._publisher.dead(message.body, headers=headers, routing_key=message.routing_key or "")
        metrics.tasks_dead_lettered_total.labels("poison_event").inc()

    def _record(self, events: list[TaskEvent], ended: list[Ended]) -> None:
        now = utcnow()
        metrics.dispatcher_batch_size.observe(len(events))
        for event in events:
            metrics.dispatcher_event_lag_seconds.observe(max(0.0, (now - event.at).total_seconds()))
        terminal = {e.task_id: e for e in events if EVENT_STATUS[e.kind].is_terminal}
        for task in ended:
            last = terminal.get(task.task_id)
            logger.bind(task_id=task.task_id, kb_id=last and last.kb_id, task_type=task.task_type,
                        stage=last and last.stage, attempt=last and last.attempt).info(
                "task {} (state committed)", task.status.value)
            if task.status is TaskStatus.COMPLETED:
                metrics.task_success_total.labels(task.task_type).inc()
            elif task.status is TaskStatus.FAILED:
                metrics.task_failure_total.labels(task.task_type).inc()
            else:
                metrics.tasks_cancelled_total.labels(task.task_type).inc()
