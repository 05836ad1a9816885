"""Asking for a task's cancel: one task from `DELETE /api/v1/tasks/{id}`, or many
from a bulk cancel. The event makes the cancel durable (the dispatcher records
it: first terminal state wins); the broadcast stops a worker already running it."""

from __future__ import annotations

from services.api import task_repository as repo
from shared.amqp.publisher import Publisher
from shared.messages import CancelTask, TaskCancelled, utcnow


async def request_cancel(publisher: Publisher, row: repo.TaskRow) -> None:
    task_id = str(row["id"])
    await publisher.event(
        TaskCancelled(
            task_id=task_id, run=row["run"], task_type=row["task_type"], kb_id=row["kb_id"],
            stage=row["stage"] or "default", attempt=max(row["attempts"], 1), finished_at=utcnow(),
        )
    )
    await publisher.control(CancelTask(task_id=task_id, run=row["run"]))
