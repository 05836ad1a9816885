"""Folding a batch of events into one change per task.

The same monotonic rules apply here (within a batch, in arrival order) and in
SQL (batch against the stored row, `state_writer.py`), so applying a batch at
once equals applying its events one by one:

- status only rises in rank (queued < processing < terminal); the first
  terminal state wins and freezes the task for its run;
- progress only rises; started_at keeps the earliest, error the latest given;
- stage, attempts, estimated_completion and next_attempt_at follow the latest
  event by time;
- an event of an older run is ignored; a `queued` event of a newer run resets
  the task (a DLQ replay).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shared.messages import (
    EVENT_STATUS,
    TaskCompleted,
    TaskEvent,
    TaskFailed,
    TaskQueued,
    TaskRetrying,
    TaskStarted,
)
from shared.status import TaskStatus


@dataclass(frozen=True)
class TaskDelta:
    task_id: str
    run: int
    task_type: str
    kb_id: str | None
    status: TaskStatus
    at: datetime
    first_at: datetime
    progress: int = 0
    stage: str | None = None
    attempts: int = 0
    error: dict[str, Any] | None = None
    result: Any = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    estimated_completion: datetime | None = None
    next_attempt_at: datetime | None = None
    requeued: bool = False
    event_count: int = 1
    kinds: tuple[str, ...] = field(default=())


def fold(events: Iterable[TaskEvent]) -> list[TaskDelta]:
    deltas: dict[str, TaskDelta] = {}
    for event in events:
        current = deltas.get(event.task_id)
        if current is None or event.run > current.run:
            deltas[event.task_id] = _from_event(event)
        elif event.run == current.run:
            deltas[event.task_id] = _merge(current, event)
    return list(deltas.values())


def _from_event(event: TaskEvent) -> TaskDelta:
    status = EVENT_STATUS[event.kind]
    return TaskDelta(
        task_id=event.task_id,
        run=event.run,
        task_type=event.task_type,
        kb_id=event.kb_id,
        status=status,
        at=event.at,
        first_at=event.at,
        progress=_progress(event),
        stage=event.stage,
        attempts=0 if isinstance(event, TaskQueued) else event.attempt,
        error=_error(event),
        result=event.result if isinstance(event, TaskCompleted) else None,
        started_at=_started_at(event),
        finished_at=getattr(event, "finished_at", None),
        estimated_completion=getattr(event, "estimated_completion", None),
        next_attempt_at=event.next_attempt_at if isinstance(event, TaskRetrying) else None,
        requeued=isinstance(event, TaskQueued),
        kinds=(event.kind,),
    )


def _merge(delta: TaskDelta, event: TaskEvent) -> TaskDelta:
    if delta.status.is_terminal:
        return replace(delta, event_count=delta.event_count + 1, kinds=(*delta.kinds, event.kind))
    incoming = _from_event(event)
    status = incoming.status if incoming.status.rank > delta.status.rank else delta.status
    latest = incoming if incoming.at >= delta.at else delta
    started = [t for t in (delta.started_at, incoming.started_at) if t is not None]
    return replace(
        delta,
        status=status,
        at=max(delta.at, incoming.at),
        first_at=min(delta.first_at, incoming.first_at),
        progress=max(delta.progress, incoming.progress),
        stage=latest.stage,
        attempts=latest.attempts,
        estimated_completion=latest.estimated_completion,
        next_attempt_at=latest.next_attempt_at,
        error=incoming.error or delta.error,
        result=incoming.result if incoming.status.is_terminal else delta.result,
        started_at=min(started) if started else None,
        finished_at=incoming.finished_at if incoming.status.is_terminal else delta.finished_at,
        event_count=delta.event_count + 1,
        kinds=(*delta.kinds, event.kind),
    )


def _progress(event: TaskEvent) -> int:
    if isinstance(event, TaskCompleted):
        return 100
    return int(getattr(event, "progress", 0) or 0)


def _error(event: TaskEvent) -> dict[str, Any] | None:
    if isinstance(event, TaskFailed | TaskRetrying):
        return event.error.model_dump(mode="json")
    if event.kind == "cancelled":
        return {"type": "cancelled", "message": event.reason, "retryable": False, "stage": event.stage}
    return None


def _started_at(event: TaskEvent) -> datetime | None:
    if isinstance(event, TaskStarted):
        return event.started_at
    return getattr(event, "started_at", None)
