"""Deliveries the worker does not run: redelivered after a crash, poison, or a
copy of a run that already finished.

Both are plans, like `outcome_plan.steps_for`: pure functions answering the
steps to publish before the ack, unit-tested without a broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from services.worker.outcome_plan import DeadLetter, PublishEvent, Republish, Step, header_int
from shared.amqp import headers as h
from shared.amqp.dead_letter import dead_letter_headers
from shared.errors import PoisonMessage
from shared.finished_tasks import REFUSAL
from shared.messages import ErrorInfo, TaskFailed, TaskMessage
from shared.task_identity import recover_identity
from shared.topology import stage_queue


def _limit_reason(headers: Mapping[str, Any], max_redeliveries: int) -> str | None:
    """Why a redelivered message must be dead-lettered now, or None to count it and go on."""
    count = header_int(headers.get(h.REDELIVERIES), 0) + 1
    if count > max_redeliveries:
        return f"redelivered {count} times: a worker died or lost its connection each time it held it"
    return None


def redelivery_steps(
    body: bytes,
    headers: Mapping[str, Any],
    *,
    stage: str,
    max_redeliveries: int,
    priority: int | None,
    message_id: str | None,
    now: datetime,
) -> list[Step]:
    """Keep the crash count with the message (republished with it, then acked);
    past `max_redeliveries` dead-letter it and fail its task, never loop on it."""
    count = header_int(headers.get(h.REDELIVERIES), 0) + 1
    reason = _limit_reason(headers, max_redeliveries)
    if reason is None:
        return [Republish(stage, body, {**headers, h.REDELIVERIES: count}, priority, message_id)]
    attempt = header_int(headers.get(h.ATTEMPT), 1)
    steps: list[Step] = [DeadLetter(body, dead_letter_headers(
        reason, source_queue=stage_queue(stage), original=headers, stage=stage, attempts=attempt,
    ), "redelivery_limit", stage)]
    with contextlib.suppress(PoisonMessage):
        task = TaskMessage.parse(body)
        steps.append(PublishEvent(TaskFailed(
            task_id=task.task_id, run=task.run, task_type=task.task_type, kb_id=task.kb_id,
            stage=stage, attempt=attempt, finished_at=now,
            error=ErrorInfo(type="redelivery_limit", message=reason, stage=stage), dead_lettered=True)))
    return steps


def poison_steps(
    body: bytes, headers: Mapping[str, Any], reason: str, *, stage: str, now: datetime
) -> list[Step]:
    """Dead-letter a message that cannot be processed; fail its task when its identity survives."""
    dead_headers = dead_letter_headers(reason, source_queue=stage_queue(stage), original=headers, stage=stage)
    steps: list[Step] = [DeadLetter(body, dead_headers, "poison", stage)]
    if (task := recover_identity(body)) is not None:
        # The record must not stay `queued` for ever: it ends failed, with the reason, and its callback.
        steps.append(PublishEvent(TaskFailed(
            task_id=task.task_id, run=task.run, task_type=task.task_type, kb_id=task.kb_id, stage=stage,
            attempt=header_int(headers.get(h.ATTEMPT), 1), finished_at=now, dead_lettered=True,
            error=ErrorInfo(type="poison_message", message=reason[:4000], stage=stage))))
    return steps


def finished_copy_steps(body: bytes, headers: Mapping[str, Any], *, stage: str) -> list[Step]:
    """A copy of a run that already ended (published by hand): refused to tm.dead, never run."""
    refused = dead_letter_headers(REFUSAL, source_queue=stage_queue(stage), original=headers, stage=stage)
    return [DeadLetter(body, refused, "already_finished", stage)]
