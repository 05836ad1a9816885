"""Starting a task again: a retry from the API, or a replay from `tm.dead`.

Both are a new *run* of the same task id: a `task.queued` event for run N+1
(the dispatcher resets the row to `queued` with a fresh attempt series, and
events of older runs are ignored from then on), then the task itself to its
first stage. The events of earlier runs stay in the event log (`task_events`),
so a task's history survives its retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.api import task_repository as repo
from shared.amqp.publisher import Publisher
from shared.errors import Conflict, NotFound
from shared.messages import TaskMessage, TaskQueued
from shared.status import Priority, TaskStatus
from shared.task_types import TaskTypeRegistry

RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})
# How long a retry waits for the dispatcher to record the new run (then 202).
RECORD_WAIT_SECONDS = 5.0
# Tasks a bulk retry starts per transaction (and holds the locks of while it waits).
BULK_CHUNK = 200
_RUNS = text("SELECT CAST(id AS text), run FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))")


async def start_run(publisher: Publisher, fresh: TaskMessage) -> None:
    """Publish a new run: first the event that resets the record, then the task."""
    await publisher.event(TaskQueued(task_id=fresh.task_id, run=fresh.run, task_type=fresh.task_type,
                                     kb_id=fresh.kb_id, stage=fresh.stage, attempt=1))
    await publisher.task(fresh)


class TaskRetry:
    """`POST /api/v1/tasks/{id}/retry`: a failed or cancelled task runs again."""

    def __init__(self, engine: AsyncEngine, publisher: Publisher, registry: TaskTypeRegistry) -> None:
        self._engine = engine
        self._publisher = publisher
        self._registry = registry

    async def retry(self, task_id: str, scope: repo.KbScope) -> tuple[repo.TaskRow, bool]:
        """Answers the task and whether the new run is already recorded.

        A transaction-scoped advisory lock on the task id serialises retries of
        one task across api replicas: the second waits, then finds the task
        `queued` (not retryable) instead of starting the same run twice."""
        async with self._engine.begin() as conn:
            row, message = await self._locked(conn, task_id, scope)
            await start_run(self._publisher, message)
            recorded = await self._wait_recorded({task_id: message.run})
        if recorded:
            async with self._engine.connect() as conn:
                row = await repo.get_task(conn, task_id, scope=scope) or row
        return row, bool(recorded)

    async def retry_many(self, task_ids: Sequence[str], scope: repo.KbScope) -> tuple[list[str], int]:
        """A bulk retry: answers the ids started and how many were skipped (no
        longer retryable, or refused as a single retry would be). Each chunk holds
        its tasks' locks until the dispatcher recorded the new runs, as `retry` does."""
        started: list[str] = []
        skipped = 0
        ids = sorted(task_ids)  # locks in one order: two bulk retries never deadlock
        for at in range(0, len(ids), BULK_CHUNK):
            async with self._engine.begin() as conn:
                messages: list[TaskMessage] = []
                for task_id in ids[at:at + BULK_CHUNK]:
                    try:
                        messages.append((await self._locked(conn, task_id, scope))[1])
                    except (Conflict, NotFound):
                        skipped += 1
                # Locked and checked one by one; published together (the confirms are the slow part).
                await asyncio.gather(*(start_run(self._publisher, m) for m in messages))
                await self._wait_recorded({m.task_id: m.run for m in messages})
            started.extend(m.task_id for m in messages)
        return started, skipped

    async def _locked(self, conn: AsyncConnection, task_id: str,
                      scope: repo.KbScope) -> tuple[repo.TaskRow, TaskMessage]:
        """The task's retry lock for this transaction, and its next run (Conflict if it may not run again)."""
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:id))"), {"id": f"retry:{task_id}"})
        row = await repo.get_task(conn, task_id, scope=scope)
        if row is None:
            raise NotFound(f"task {task_id!r} not found")
        return row, self._message(row)

    def _message(self, row: repo.TaskRow) -> TaskMessage:
        task_id, status = str(row["id"]), TaskStatus(row["status"])
        if status not in RETRYABLE:
            raise Conflict(f"task {task_id} is {status.value}; only failed or cancelled tasks can be retried",
                           status=status.value)
        task_type = self._registry.get(row["task_type"])
        if task_type is None:
            raise Conflict(f"task type {row['task_type']!r} is no longer known; the task cannot run again")
        try:
            parsed = task_type.payload_model.model_validate(row["payload"])
        except ValidationError:
            raise Conflict("the stored payload is no longer valid for its task type; submit a new task") from None
        if _holds_secret(parsed):
            # Secrets travel only in the message, never in the row: a retry would run without them.
            raise Conflict("this task carried a secret (e.g. a PDF password) that is never stored; "
                           "submit it again with the secret")
        return TaskMessage(
            task_id=task_id, run=int(row["run"]) + 1, task_type=task_type.name, kb_id=row["kb_id"],
            payload=row["payload"], priority=Priority(row["priority"]), retry_limit=row["retry_limit"],
            timeout_seconds=row["timeout_seconds"], created_at=row["created_at"],
            stages=task_type.stages, stage=task_type.stages[0],
        )

    async def _wait_recorded(self, runs: dict[str, int]) -> bool:
        """Whether the dispatcher recorded every new run within RECORD_WAIT_SECONDS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_WAIT_SECONDS
        while runs and loop.time() < deadline:
            await asyncio.sleep(0.02)
            async with self._engine.connect() as conn:
                result = await conn.execute(_RUNS, {"ids": list(runs)})
            if all(run >= runs[task_id] for task_id, run in result):
                return True
        return not runs


def _holds_secret(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return True
    if isinstance(value, BaseModel):
        return any(_holds_secret(getattr(value, name)) for name in type(value).model_fields)
    if isinstance(value, list | tuple):
        return any(_holds_secret(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_secret(v) for v in value.values())
    return False
