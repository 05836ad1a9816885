"""What a finished attempt leads to: the retry/dead-letter plan, as data.

`steps_for` is a pure function of the attempt's outcome, its task, its number
and the delivery's headers: it answers the steps the worker must publish, in
order, before it acks the delivery. It touches no broker, so it is unit-tested
without one (tests/test_outcome_plan.py); the consumer only executes the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.worker.retry_policy import RetryPolicy
from services.worker.stages.base import StageOutput
from shared.amqp import headers as h
from shared.amqp.dead_letter import dead_letter_headers
from shared.messages import (
    ErrorInfo,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskMessage,
    TaskQueued,
    TaskRetrying,
    TaskStageCompleted,
    utcnow,
)
from shared.topology import RetryTier, stage_queue

# --- what an attempt ended with ----------------------------------------------------


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

# --- what the worker publishes before the ack ----------------------------------------

Event = TaskCancelled | TaskCompleted | TaskFailed | TaskQueued | TaskRetrying | TaskStageCompleted


@dataclass(frozen=True)
class PublishEvent:
    event: Event


@dataclass(frozen=True)
class ForwardTask:
    """The task's next stage, on `tm.tasks`."""

    task: TaskMessage


@dataclass(frozen=True)
class ScheduleRetry:
    """The same stage again, after waiting in a retry tier."""

    task: TaskMessage
    tier: RetryTier
    headers: dict[str, Any]


@dataclass(frozen=True)
class DeadLetter:
    body: bytes
    headers: dict[str, Any]
    reason: str  # the `tasks_dead_lettered_total` label
    stage: str  # the routing key in `tm.dead`


@dataclass(frozen=True)
class Republish:
    """The delivery again, unchanged but for its headers (redelivery counting)."""

    stage: str
    body: bytes
    headers: dict[str, Any]
    priority: int | None
    message_id: str | None


Step = PublishEvent | ForwardTask | ScheduleRetry | DeadLetter | Republish


class AttemptView(Protocol):
    """What the plan reads of the attempt (services.worker.attempt.AttemptContext)."""

    @property
    def started_at(self) -> datetime: ...

    def overall_progress(self, stage_percent: float | None = None) -> int: ...

    def estimated_completion(self, *, stage_done: bool = False) -> datetime | None: ...


def steps_for(
    outcome: Outcome,
    task: TaskMessage,
    attempt: int,
    headers: Mapping[str, Any],
    *,
    ctx: AttemptView,
    retry_policy: RetryPolicy,
    now: datetime,
) -> list[Step]:
    """What must be published, in order, before the delivery is acked."""
    stage = task.stage
    base = {"task_id": task.task_id, "run": task.run, "task_type": task.task_type, "kb_id": task.kb_id,
            "stage": stage, "attempt": attempt}
    if isinstance(outcome, Cancelled):
        return [PublishEvent(cancelled_event(task, attempt, now))]
    if isinstance(outcome, Succeeded):
        output = outcome.output
        if output.fan_out:  # the shards of this stage, one message each (docs/decisions/0170)
            return [ForwardTask(task.model_copy(update={"context": {**task.context, **shard}}))
                    for shard in output.fan_out]
        if output.hold:  # another shard of this stage is still running; the last one moves on
            return []
        if task.next_stage is None:
            return [PublishEvent(TaskCompleted(**base, result=output.result, started_at=ctx.started_at,
                                               finished_at=now))]
        forwarded = task.forwarded(dict(output.context))
        if "shard" in forwarded.context:  # a shard's page range ends with its stage
            forwarded = forwarded.model_copy(update={"context": {
                k: v for k, v in forwarded.context.items() if k not in ("shard", "stage_started")}})
        return [
            PublishEvent(TaskStageCompleted(**base, next_stage=forwarded.stage,
                                            progress=ctx.overall_progress(100), started_at=ctx.started_at,
                                            estimated_completion=ctx.estimated_completion(stage_done=True))),
            ForwardTask(forwarded),
        ]
    error = outcome.error
    if error.retryable and retry_policy.should_retry(attempt, task.retry_limit):
        tier = retry_policy.tier_for(attempt)
        retry_headers = {
            h.ATTEMPT: attempt + 1,
            h.FIRST_FAILURE_AT: headers.get(h.FIRST_FAILURE_AT, now.isoformat()),
            h.LAST_FAILURE_AT: now.isoformat(),
            h.LAST_ERROR: error.message[:2000],
        }
        return [
            ScheduleRetry(task, tier, retry_headers),
            PublishEvent(TaskRetrying(**base, error=error, started_at=ctx.started_at,
                                      next_attempt_at=now + timedelta(seconds=tier.seconds))),
        ]
    steps: list[Step] = []
    dead = error.retryable  # retries exhausted: keep it for operators to inspect and replay
    if dead:
        reason = f"retries exhausted after {attempt} attempt(s)"
        dead_headers = dead_letter_headers(
            reason, source_queue=stage_queue(stage), original=headers, stage=stage,
            last_error=error.message, attempts=attempt,
            first_failure_at=headers.get(h.FIRST_FAILURE_AT, now.isoformat()), last_failure_at=now,
        )
        steps.append(DeadLetter(task.model_dump_json().encode(), dead_headers, "retries_exhausted", stage))
        error = error.model_copy(update={"message": f"{error.message} ({reason})"})
    steps.append(PublishEvent(TaskFailed(**base, error=error, started_at=ctx.started_at, finished_at=now,
                                         dead_lettered=dead)))
    return steps


def cancelled_event(task: TaskMessage, attempt: int, now: datetime | None = None) -> TaskCancelled:
    return TaskCancelled(task_id=task.task_id, run=task.run, task_type=task.task_type, kb_id=task.kb_id,
                         stage=task.stage, attempt=attempt, finished_at=now or utcnow())


def header_int(value: Any, default: int) -> int:
    """A counter header as an int; a missing or mangled one counts as `default`."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
