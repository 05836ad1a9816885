"""The one consume loop, with the ack and retry policy in front of every stage.

For each delivery of `tm.stage.<stage>`:

1. a message redelivered after a crash has its count kept in our header
   (republished); past `MAX_REDELIVERIES` it is dead-lettered, never looped on;
2. a message that does not parse is dead-lettered with the reason;
3. a task cancelled before delivery is skipped;
4. the stage runs under the task's timeout, cancellable via tm.control;
5. its outcome is published (next stage, retry, dead letter, events) with
   confirms, and only then is the delivery acked: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import backoff
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from loguru import logger

from services.worker.attempt import AttemptContext
from services.worker.cancellation import CancellationRegistry, CancelledByRequest
from services.worker.cpu import CpuPool
from services.worker.estimates import DurationEstimator
from services.worker.finished_tasks import FinishedRuns
from services.worker.hand_replay import HandReplayGate
from services.worker.retry_policy import RetryPolicy
from services.worker.stages.base import StageHandler, StageOutput
from shared import metrics
from shared.amqp import headers as h
from shared.amqp.dead_letter import dead_letter_headers
from shared.amqp.publisher import Publisher
from shared.errors import PoisonMessage, TaskError, Unavailable
from shared.finished_tasks import REFUSAL
from shared.hand_replay import dead_mark
from shared.messages import (
    ErrorInfo,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskMessage,
    TaskRetrying,
    TaskStageCompleted,
    utcnow,
)
from shared.runtime import bounded
from shared.settings import RetrySettings, WorkerSettings
from shared.task_files import TaskFiles
from shared.task_identity import recover_identity
from shared.task_limits import OUTCOME_PUBLISH_MAX_SECONDS
from shared.topology import TASKS_EXCHANGE, Topology, declare_queue, stage_queue


@dataclass(frozen=True)
class Succeeded:
    output: StageOutput


@dataclass(frozen=True)
class Failed:
    error: ErrorInfo


@dataclass(frozen=True)
class Cancelled:
    pass


Outcome = Succeeded | Failed | Cancelled
Step = Callable[[], Awaitable[None]]

# OUTCOME_PUBLISH_MAX_SECONDS: how long a worker keeps retrying the publishes of an
# outcome while still holding the delivery (shared/task_limits.py ties it to consumer_timeout).


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
        self._inflight: dict[asyncio.Task[Any], AbstractIncomingMessage] = {}
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._stopping = False
        self._active_gauge = metrics.worker_pool_active_count.labels(stage)
        self._idle_gauge = metrics.worker_pool_idle_count.labels(stage)
        # Built once: wrapping each step anew cost more than publishing it.
        self._run_with_retries = backoff.on_exception(
            backoff.expo, Unavailable, max_value=10, max_time=OUTCOME_PUBLISH_MAX_SECONDS, giveup=lambda _: self._stopping, logger=None,
            on_backoff=lambda d: logger.warning("publish refused ({}); retrying in {:.1f}s",
                                                getattr(d.get("exception"), "message", "?"), d["wait"]),
        )(_run_step)
        self._update_pool_gauges()

    @property
    def active(self) -> int:
        return len(self._inflight)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def check_consuming(self) -> None:
        """Readiness: this worker takes deliveries from its stage queue."""
        if self._stopping:
            raise RuntimeError("shutting down: no longer consuming")
        if self._channel is None or self._channel.is_closed or self._consumer_tag is None:
            raise RuntimeError(f"not consuming {stage_queue(self.stage)}")
        # An open channel is not enough: after a reconnect the consumer must be back on it.
        underlay = await self._channel.get_underlay_channel()
        # aiormq's Channel has `consumers`; its abstract type (what aio-pika declares) does not.
        if self._consumer_tag not in underlay.consumers:  # type: ignore[attr-defined]
            raise RuntimeError(f"not consuming {stage_queue(self.stage)} (consumer not restored)")

    # --- lifecycle ---------------------------------------------------------------

    async def start(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        self._channel = await connection.channel()
        # Prefetch = pool size: the broker keeps the rest, so priorities still reorder them.
        await self._channel.set_qos(prefetch_count=self.pool_size)
        self._queue = await declare_queue(self._channel, topology, stage_queue(self.stage))
        self._consumer_tag = await self._queue.consume(self._on_message)
        logger.info("consuming {} with {} slots", stage_queue(self.stage), self.pool_size)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking work, let in-flight attempts finish within the grace
        period, then requeue whatever is still running."""
        self._stopping = True
        if self._queue is not None and self._consumer_tag is not None:
            await bounded(self._queue.cancel(self._consumer_tag), "cancelling the consumer")
        pending = set(self._inflight)
        if pending:
            logger.info("waiting up to {}s for {} task(s) in flight", grace_seconds, len(pending))
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
        for task in pending:
            task.cancel("worker shutting down")
        if pending:
            await asyncio.wait(pending, timeout=5)
            logger.warning("requeued {} unfinished task(s) at shutdown", len(pending))
        if self._channel is not None:
            await bounded(self._channel.close(), "closing the consumer channel")

    # --- the loop ------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        current = asyncio.current_task()
        assert current is not None
        self._inflight[current] = message
        self._update_pool_gauges()
        try:
            await self._process(message)
        except asyncio.CancelledError:
            # Shutdown: give the message back so another worker takes it.
            await _quietly(message.nack(requeue=True))
        except Exception:  # noqa: BLE001 - a consumer never dies on one message
            logger.exception("unexpected error handling a delivery; requeueing it")
            await asyncio.sleep(1)
            await _quietly(message.nack(requeue=True))
        finally:
            self._inflight.pop(current, None)
            self._update_pool_gauges()

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
            refused = dead_letter_headers(REFUSAL, source_queue=stage_queue(self.stage), original=headers,
                                          stage=self.stage)
            await self._settle(message, [lambda: self._dead(message.body, refused, "already_finished")])
            return
        attempt = _int(headers.get(h.ATTEMPT), 1)
        with logger.contextualize(
            task_id=task.task_id, kb_id=task.kb_id, task_type=task.task_type, stage=self.stage, attempt=attempt
        ):
            if self._cancellations.is_cancelled(task.task_id, task.run):
                logger.info("skipping a task cancelled before it ran")
                await self._settle(message, [self._event_step(_cancelled(task, attempt))])
                return
            outcome, ctx = await self._attempt(task, attempt)
            await self._settle(message, self._steps_for(outcome, task, attempt, headers, ctx))

    async def _attempt(self, task: TaskMessage, attempt: int) -> tuple[Outcome, AttemptContext]:
        ctx = AttemptContext(
            task, attempt, events=self._publisher, estimator=self._estimator, worker_id=self.worker_id, cpu=self._cpu,
            files=self._files,
        )
        timeout = task.timeout_seconds or self._settings.task_timeout
        loop = asyncio.get_running_loop()
        announce = loop.call_later(
            self._settings.started_event_delay_seconds, lambda: asyncio.ensure_future(ctx.announce_started())
        )
        outcome: Outcome
        try:
            async with asyncio.timeout(timeout):
                output = await self._cancellations.run(task.task_id, self._handler(task, ctx))
            outcome = Succeeded(output)
        except CancelledByRequest:
            outcome = Cancelled()
        except TimeoutError:
            outcome = Failed(_error("timeout", f"the attempt exceeded its {timeout:g}s time limit", True, task))
        except TaskError as exc:
            outcome = Failed(_error(exc.code, exc.message, exc.retryable, task))
        except Exception as exc:  # noqa: BLE001 - an unexpected error is retried like a transient one
            logger.opt(exception=exc).warning("stage raised an unexpected error")
            outcome = Failed(_error(type(exc).__name__, str(exc) or repr(exc), True, task))
        finally:
            announce.cancel()
        elapsed = ctx.elapsed_seconds
        label = {Succeeded: "succeeded", Failed: "failed", Cancelled: "cancelled"}[type(outcome)]
        metrics.task_attempts_total.labels(task.task_type, self.stage, label).inc()
        metrics.task_processing_duration_seconds.labels(task.task_type, self.stage).observe(elapsed)
        if isinstance(outcome, Succeeded):
            self._estimator.observe(task.task_type, self.stage, elapsed)
            self.processed += 1
            # Debug: at INFO a task's success is the dispatcher's one "completed" line
            # (a line per attempt cost ~20% of a no-op task's CPU across the fleet).
            logger.debug("attempt succeeded in {:.3f}s", elapsed)
        elif isinstance(outcome, Failed):
            self.failed += 1
            logger.info("attempt failed after {:.3f}s: {}", elapsed, outcome.error.message)
        else:
            logger.info("attempt cancelled after {:.3f}s", elapsed)
        return outcome, ctx

    # --- outcomes ----------------------------------------------------------------------

    def _steps_for(
        self, outcome: Outcome, task: TaskMessage, attempt: int, headers: dict[str, Any], ctx: AttemptContext
    ) -> list[Step]:
        """What must be published, in order, before the delivery is acked."""
        now = utcnow()
        base = {"task_id": task.task_id, "run": task.run, "task_type": task.task_type, "kb_id": task.kb_id,
                "stage": self.stage, "attempt": attempt}
        if isinstance(outcome, Cancelled):
            return [self._event_step(_cancelled(task, attempt))]
        if isinstance(outcome, Succeeded):
            output = outcome.output
            if task.next_stage is None:
                return [self._event_step(TaskCompleted(**base, result=output.result, started_at=ctx.started_at,
                                                       finished_at=now))]
            forwarded = task.forwarded(dict(output.context))
            return [
                self._event_step(TaskStageCompleted(**base, next_stage=forwarded.stage,
                                                    progress=ctx.overall_progress(100), started_at=ctx.started_at,
                                                    estimated_completion=ctx.estimated_completion(stage_done=True))),
                lambda: self._publisher.task(forwarded),
            ]
        error = outcome.error
        if error.retryable and self._retry_policy.should_retry(attempt, task.retry_limit):
            tier = self._retry_policy.tier_for(attempt)
            retry_headers = {
                h.ATTEMPT: attempt + 1,
                h.FIRST_FAILURE_AT: headers.get(h.FIRST_FAILURE_AT, now.isoformat()),
                h.LAST_FAILURE_AT: now.isoformat(),
                h.LAST_ERROR: error.message[:2000],
            }
            metrics.tasks_retried_total.labels(task.task_type, self.stage).inc()
            return [
                lambda: self._publisher.retry(task, tier, headers=retry_headers),
                self._event_step(TaskRetrying(**base, error=error, started_at=ctx.started_at,
                                              next_attempt_at=now + timedelta(seconds=tier.seconds))),
            ]
        steps: list[Step] = []
        dead = error.retryable  # retries exhausted: keep it for operators to inspect and replay
        if dead:
            reason = f"retries exhausted after {attempt} attempt(s)"
            dead_headers = dead_letter_headers(
                reason, source_queue=stage_queue(self.stage), original=headers, stage=self.stage,
                last_error=error.message, attempts=attempt,
                first_failure_at=headers.get(h.FIRST_FAILURE_AT, now.isoformat()), last_failure_at=now,
            )
            body = task.model_dump_json().encode()
            steps.append(lambda: self._dead(body, dead_headers, "retries_exhausted"))
            error = error.model_copy(update={"message": f"{error.message} ({reason})"})
        steps.append(self._event_step(TaskFailed(**base, error=error, started_at=ctx.started_at, finished_at=now,
                                                 dead_lettered=dead)))
        return steps

    async def _settle(self, message: AbstractIncomingMessage, steps: list[Step]) -> None:
        """Publish each step (retrying a step that the broker refused, never
        repeating one that succeeded), then ack."""
        for step in steps:
            await self._with_retries(step)
        await message.ack()

    async def _with_retries(self, step: Step) -> None:
        await self._run_with_retries(step)

    def _event_step(self, event: Any) -> Step:
        return lambda: self._publisher.event(event)

    async def _dead(self, body: bytes, headers: dict[str, Any], reason: str) -> None:
        await self._publisher.dead(body, headers=headers, routing_key=self.stage)
        metrics.tasks_dead_lettered_total.labels(reason).inc()

    # --- broken deliveries -----------------------------------------------------------------

    async def _count_redelivery(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> bool:
        """Keep the crash count with the message. Answers True when the delivery was handled."""
        count = _int(headers.get(h.REDELIVERIES), 0) + 1
        if count > self._max_redeliveries:
            reason = f"redelivered {count} times: a worker died or lost its connection each time it held it"
            steps: list[Step] = [lambda: self._dead(message.body, dead_letter_headers(
                reason, source_queue=stage_queue(self.stage), original=headers, stage=self.stage,
                attempts=_int(headers.get(h.ATTEMPT), 1)), "redelivery_limit")]
            with contextlib.suppress(PoisonMessage):
                task = TaskMessage.parse(message.body)
                now = utcnow()
                steps.append(self._event_step(TaskFailed(
                    task_id=task.task_id, run=task.run, task_type=task.task_type, kb_id=task.kb_id,
                    stage=self.stage, attempt=_int(headers.get(h.ATTEMPT), 1), finished_at=now,
                    error=ErrorInfo(type="redelivery_limit", message=reason, stage=self.stage), dead_lettered=True)))
            logger.error("dead-lettering a message: {}", reason)
            await self._settle(message, steps)
            return True
        republish = lambda: self._publisher.publish(
            TASKS_EXCHANGE, self.stage, message.body, headers={**headers, h.REDELIVERIES: count},
            priority=message.priority, message_id=message.message_id,
        )
        await self._settle(message, [republish])
        return True

    async def _dead_letter_poison(self, message: AbstractIncomingMessage, headers: dict[str, Any], reason: str) -> None:
        logger.error("dead-lettering a message that cannot be processed: {}", reason)
        dead_headers = dead_letter_headers(reason, source_queue=stage_queue(self.stage), original=headers,
                                           stage=self.stage)
        steps: list[Step] = [lambda: self._dead(message.body, dead_headers, "poison")]
        if (task := recover_identity(message.body)) is not None:
            # The record must not stay `queued` for ever: it ends failed, with the reason, and its callback.
            steps.append(self._event_step(TaskFailed(
                task_id=task.task_id, run=task.run, task_type=task.task_type, kb_id=task.kb_id, stage=self.stage,
                attempt=_int(headers.get(h.ATTEMPT), 1), finished_at=utcnow(), dead_lettered=True,
                error=ErrorInfo(type="poison_message", message=reason[:4000], stage=self.stage))))
        await self._settle(message, steps)

    def _update_pool_gauges(self) -> None:
        self._active_gauge.set(self.active)
        self._idle_gauge.set(max(0, self.pool_size - self.active))


def _cancelled(task: TaskMessage, attempt: int) -> TaskCancelled:
    return TaskCancelled(task_id=task.task_id, run=task.run, task_type=task.task_type, kb_id=task.kb_id,
                         stage=task.stage, attempt=attempt, finished_at=utcnow())


def _error(kind: str, message: str, retryable: bool, task: TaskMessage) -> ErrorInfo:
    return ErrorInfo(type=kind, message=message[:4000], retryable=retryable, stage=task.stage)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


async def _run_step(step: Step) -> None:
    await step()


async def _quietly(awaitable: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):
        await awaitable

