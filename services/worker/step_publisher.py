"""Carrying out a plan's steps (outcome_plan, broken_deliveries) before the ack.

Each step is retried while the broker refuses it and never repeated once it
succeeded; only when every step is confirmed is the delivery acked.
"""

from __future__ import annotations

from collections.abc import Callable

import backoff
from aio_pika.abc import AbstractIncomingMessage
from loguru import logger

from services.worker import outcome_plan as plan
from shared import metrics
from shared.amqp.publisher import EventPublisher, Publisher
from shared.errors import Unavailable
from shared.topology import TASKS_EXCHANGE


class StepPublisher:
    def __init__(
        self, publisher: Publisher, *, events: EventPublisher, stage: str, max_seconds: float,
        giving_up: Callable[[], bool],
    ) -> None:
        self._publisher = publisher
        self._events = events  # batched with other attempts' events of the same kind
        self._stage = stage
        # Built once: wrapping each step anew cost more than publishing it.
        self._with_retries = backoff.on_exception(
            backoff.expo, Unavailable, max_value=10, max_time=max_seconds, giveup=lambda _: giving_up(),
            logger=None,
            on_backoff=lambda d: logger.warning("publish refused ({}); retrying in {:.1f}s",
                                                getattr(d.get("exception"), "message", "?"), d["wait"]),
        )(self.execute)

    async def settle(self, message: AbstractIncomingMessage, steps: list[plan.Step]) -> None:
        """Publish each step (retrying a step that the broker refused, never
        repeating one that succeeded), then ack."""
        for step in steps:
            if isinstance(step, plan.ScheduleRetry):
                metrics.tasks_retried_total.labels(step.task.task_type, self._stage).inc()
            await self._with_retries(step)
        await message.ack()

    async def execute(self, step: plan.Step) -> None:
        """One step, once."""
        match step:
            case plan.PublishEvent(event):
                await self._events.event(event)
            case plan.ForwardTask(task):
                await self._publisher.task(task)
            case plan.ScheduleRetry(task, tier, headers):
                await self._publisher.retry(task, tier, headers=headers)
            case plan.DeadLetter(body, headers, reason, stage):
                await self._publisher.dead(body, headers=headers, routing_key=stage)
                metrics.tasks_dead_lettered_total.labels(reason).inc()
            case plan.Republish(stage, body, headers, priority, message_id):
                await self._publisher.publish(TASKS_EXCHANGE, stage, body, headers=headers,
                                              priority=priority, message_id=message_id)
