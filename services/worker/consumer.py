"""The one consume loop, with the ack and retry policy in front of every stage.

For each delivery of `tm.stage.<stage>`:

1. a message redelivered after a crash has its count kept in our header
   (republished); past `MAX_REDELIVERIES` it is dead-lettered, never looped on;
2. a message that does not parse is dead-lettered with the reason; a dead letter
   moved back by hand becomes a replay; a copy of a finished run is refused;
3. a task cancelled before delivery is skipped;
4. the stage runs under the task's timeout, cancellable via tm.control;
5. its outcome is published (next stage, retry, dead letter, events) with
   confirms, and only then is the delivery acked: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from services.worker import outcome_plan as plan
from services.worker.attempt import AttemptContext
from services.worker.attempt_runner import observe, run_attempt
from services.worker.broken_deliveries import finished_copy_steps, poison_steps, redelivery_steps
from services.worker.cancellation import CancellationRegistry
from services.worker.cpu import CpuPool
from services.worker.estimates import DurationEstimator
from services.worker.finished_tasks import FinishedRuns
from services.worker.hand_replay import HandReplayGate
from services.worker.in_flight import InFlight
from services.worker.outcome_plan import Failed, Outcome, Step, Succeeded, steps_for
from services.worker.retry_policy import RetryPolicy
from services.worker.stages.base import StageHandler
from services.worker.step_publisher import StepPublisher
from shared.amqp import headers as h
from shared.amqp.consumer import QueueConsumer, quietly
from shared.amqp.event_batches import EventBatches
from shared.amqp.publisher import Publisher
from shared.errors import PoisonMessage
from shared.finished_tasks import REFUSAL
from shared.hand_replay import dead_mark
from shared.messages import TaskMessage, utcnow
from shared.settings import RetrySettings, WorkerSettings
from shared.task_files import TaskFiles
from shared.task_limits import OUTCOME_PUBLISH_MAX_SECONDS
from shared.topology import Topology, declare_queue, stage_queue


class StageWorker:
    def __init__(
        self,
        *,
        stage: str,
        handler: StageHandler,
        publisher: Publisher,
        cancellations: CancellationRegistry,
        retry_policy: RetryPolicy,
        worker_settings: WorkerSettings,
        retry_settings: RetrySettings,
        worker_id: str,
        cpu: CpuPool,
        files: TaskFiles,
        hand_replays: HandReplayGate | None = None,
        finished: FinishedRuns | None = None,
    ) -> None:
        self.stage = stage
        self._hand_replays = hand_replays
        self._finished = finished
        self._files = files
        self.worker_id = worker_id
        self.pool_size = worker_settings.worker_pool_size
        self.processed = 0
        self.failed = 0
        self._handler = handler
        self._cpu = cpu
        self._publisher = publisher
        self._cancellations = cancellations
        self._retry_policy = retry_policy
        self._settings = worker_settings
        self._max_redeliveries = retry_settings.max_redeliveries
        self._estimator = DurationEstimator()
        self._inflight = InFlight(stage, self.pool_size)
        # Prefetch = pool size: the broker keeps the rest, so priorities still reorder them.
        self._consumer = QueueConsumer(self._on_message, what=stage_queue(stage), prefetch=self.pool_size)
        self._stopping = False
        self._events = EventBatches(publisher)
        self._steps = StepPublisher(publisher, events=self._events, stage=stage, max_seconds=OUTCOME_PUBLISH_MAX_SECONDS,
                                    giving_up=lambda: self._stopping)

    @property
    def active(self) -> int:
        return len(self._inflight)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def check_consuming(self) -> None:
        """Readiness: this worker takes deliveries from its stage queue."""
        await self._consumer.check_consuming()

    # --- lifecycle ---------------------------------------------------------------

    async def start(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        await self._consumer.start(connection, lambda ch: declare_queue(ch, topology, self._consumer.what))
        logger.info("consuming {} with {} slots", self._consumer.what, self.pool_size)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking work, let in-flight attempts finish within the grace
        period, then requeue whatever is still running."""
        self._stopping = True
        await self._consumer.cancel()
        await self._inflight.drain(grace_seconds)
        await self._consumer.close()

    # --- the loop ------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        with self._inflight.holding():
            try:
                await self._process(message)
            except asyncio.CancelledError:
                # Shutdown: give the message back so another worker takes it.
                await quietly(message.nack(requeue=True))
            except Exception:  # noqa: BLE001 - a consumer never dies on one message
                logger.exception("unexpected error handling a delivery; requeueing it")
                await asyncio.sleep(1)
                await quietly(message.nack(requeue=True))

    async def _process(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        if message.redelivered and await self._count_redelivery(message, headers):
            return
        try:
            task = TaskMessage.parse(message.body)
            if task.stage != self.stage:
                raise PoisonMessage(f"message for stage {task.stage!r} arrived on stage {self.stage!r}")
        except PoisonMessage as exc:
            await self._dead_letter_poison(message, headers, exc.message)
            return
        if self._hand_replays is not None and (mark := dead_mark(headers)) is not None:
            # Back from tm.dead by hand: a new run, or back to tm.dead; never a silent rerun.
            await self._settle(message, await self._hand_replays.steps_for(message, task, mark, headers))
            return
        if self._finished is not None and self._finished.is_finished(task.task_id, task.run):
            logger.bind(task_id=task.task_id).warning("refusing a copy of a finished run {}: {}", task.run, REFUSAL)
            await self._settle(message, finished_copy_steps(message.body, headers, stage=self.stage))
            return
        attempt = plan.header_int(headers.get(h.ATTEMPT), 1)
        with logger.contextualize(
            task_id=task.task_id, kb_id=task.kb_id, task_type=task.task_type, stage=self.stage, attempt=attempt
        ):
            if self._cancellations.is_cancelled(task.task_id, task.run):
                logger.info("skipping a task cancelled before it ran")
                await self._settle(message, [plan.PublishEvent(plan.cancelled_event(task, attempt))])
                return
            outcome, ctx = await self._attempt(task, attempt)
            await self._settle(message, self._steps_for(outcome, task, attempt, headers, ctx))

    async def _attempt(self, task: TaskMessage, attempt: int) -> tuple[Outcome, AttemptContext]:
        ctx = AttemptContext(
            task, attempt, events=self._events, estimator=self._estimator, worker_id=self.worker_id, cpu=self._cpu,
            files=self._files,
        )
        outcome = await run_attempt(
            self._handler, task, ctx, cancellations=self._cancellations,
            timeout=task.timeout_seconds or self._settings.task_timeout,
            announce_after=self._settings.started_event_delay_seconds,
        )
        observe(outcome, ctx, self._estimator)
        self.processed += isinstance(outcome, Succeeded)
        self.failed += isinstance(outcome, Failed)
        return outcome, ctx

    def _steps_for(
        self, outcome: Outcome, task: TaskMessage, attempt: int, headers: dict[str, Any], ctx: AttemptContext
    ) -> list[Step]:
        """What must be published, in order, before the delivery is acked (see outcome_plan)."""
        return steps_for(outcome, task, attempt, headers, ctx=ctx, retry_policy=self._retry_policy, now=utcnow())

    async def _settle(self, message: AbstractIncomingMessage, steps: list[Step]) -> None:
        """Publish the steps (each retried while the broker refuses it), then ack."""
        await self._steps.settle(message, steps)

    # --- broken deliveries -----------------------------------------------------------------

    async def _count_redelivery(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> bool:
        """Keep the crash count with the message. Answers True when the delivery was handled."""
        steps = redelivery_steps(message.body, headers, stage=self.stage, max_redeliveries=self._max_redeliveries,
                                 priority=message.priority, message_id=message.message_id, now=utcnow())
        if isinstance(steps[0], plan.DeadLetter):
            logger.error("dead-lettering a message: {}", steps[0].headers[h.DEAD_REASON])
        await self._settle(message, steps)
        return True

    async def _dead_letter_poison(self, message: AbstractIncomingMessage, headers: dict[str, Any], reason: str) -> None:
        logger.error("dead-lettering a message that cannot be processed: {}", reason)
        await self._settle(message, poison_steps(message.body, headers, reason, stage=self.stage, now=utcnow()))
