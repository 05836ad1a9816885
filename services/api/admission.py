"""Admission: turning validated requests into recorded, routed tasks.

One path for REST, batch and `tm.submit`:

    BEGIN; INSERT rows; publish each to its first stage (confirmed); COMMIT

The broker confirms before the row commits, so a client that gets `201` has a
task that is both recorded and queued. If the publish fails the transaction
rolls back and nothing is left half-created. (If the commit itself fails after
the broker confirmed, the task still runs and the dispatcher creates its row
from its events: at-least-once, never lost.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from loguru import logger
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api import task_repository as repo
from services.api.task_repository import TaskRow
from shared import metrics
from shared.amqp.publisher import Publisher
from shared.errors import Conflict, TaskManagerError, Unavailable
from shared.ids import new_task_id
from shared.messages import TaskMessage, utcnow
from shared.status import TaskStatus
from shared.task_request import ValidTask


@dataclass(frozen=True)
class Admitted:
    task: TaskRow
    created: bool  # False when an idempotency key returned an existing task


AdmissionResult = Admitted | TaskManagerError

_DB_ERRORS = (DBAPIError, InterfaceError, OperationalError, OSError, ConnectionError)


class Admission:
    def __init__(
        self, engine: AsyncEngine, publisher: Publisher, *, max_in_flight: int, wait_seconds: float
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wait_seconds = wait_seconds

    async def admit(
        self, items: Sequence[tuple[ValidTask, str | None]], *, via: str, owner: str
    ) -> list[AdmissionResult]:
        """Admit `(task, idempotency_key)` pairs for `owner` (whose namespace the
        idempotency keys live in); one result per item, in order."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self._wait_seconds)
        except TimeoutError:
            busy = Unavailable("too many tasks are being admitted right now; retry shortly")
            return [busy for _ in items]
        try:
            return await self._admit(items, via, owner)
        finally:
            self._slots.release()

    async def _admit(
        self, items: Sequence[tuple[ValidTask, str | None]], via: str, owner: str
    ) -> list[AdmissionResult]:
        now = utcnow()
        rows = [_row(valid, key, now, owner) for valid, key in items]
        results: list[AdmissionResult | None] = [None] * len(items)
        try:
            async with self._engine.begin() as conn:
                inserted = await repo.insert_tasks(conn, rows)
                existing = await repo.tasks_by_idempotency_key(
                    conn, owner, [r["idempotency_key"] for r in rows if r["id"] not in inserted]
                )
                to_publish = []
                for i, row in enumerate(rows):
                    if row["id"] in inserted:
                        to_publish.append(i)
                    else:
                        results[i] = _replayed(row, existing.get(row["idempotency_key"]))
                outcomes = await asyncio.gather(
                    *(self._publisher.task(_message(items[i][0], rows[i])) for i in to_publish),
                    return_exceptions=True,
                )
                refused = []
                for i, outcome in zip(to_publish, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        refused.append(rows[i]["id"])
                        results[i] = _as_unavailable(outcome)
                    else:
                        results[i] = Admitted(rows[i], created=True)
                await repo.delete_tasks(conn, refused)
        except _DB_ERRORS as exc:
            logger.warning("admission failed: database unavailable ({})", type(exc).__name__)
            return [Unavailable("the task database is unavailable; retry shortly") for _ in items]

        for (valid, _), result in zip(items, results, strict=True):
            if isinstance(result, Admitted) and result.created:
                metrics.tasks_submitted_total.labels(valid.task_type.name, via).inc()
                row = result.task
                with logger.contextualize(task_id=str(row["id"]), kb_id=row["kb_id"], task_type=row["task_type"],
                                          stage=row["stage"], attempt=row["attempts"]):
                    logger.info("task accepted via {} (priority {})", via, row["priority"])
            elif isinstance(result, TaskManagerError):
                metrics.tasks_rejected_total.labels(result.code, via).inc()
        return [r for r in results if r is not None]


def _row(valid: ValidTask, idempotency_key: str | None, now: datetime, owner: str) -> dict[str, object]:
    request = valid.request
    return {
        "id": new_task_id(),
        "run": 1,
        "task_type": valid.task_type.name,
        "kb_id": request.kb_id,
        # Secrets (a PDF password) travel only in the message, never in the row.
        "payload": valid.stored_payload if valid.stored_payload is not None else valid.payload,
        "priority": request.priority.value,
        "retry_limit": valid.retry_limit,
        "timeout_seconds": request.timeout_seconds,
        "callback_url": valid.callback_url,
        "status": TaskStatus.QUEUED.value,
        "progress": 0,
        "stage": valid.task_type.stages[0],
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "idempotency_key": idempotency_key,
        "request_hash": valid.request_hash,
        "created_by": owner,
    }


def _message(valid: ValidTask, row: dict[str, object]) -> TaskMessage:
    stages = valid.task_type.stages
    return TaskMessage(
        task_id=str(row["id"]),
        task_type=valid.task_type.name,
        kb_id=valid.request.kb_id,
        payload=valid.payload,
        priority=valid.request.priority,
        retry_limit=valid.retry_limit,
        timeout_seconds=valid.request.timeout_seconds,
        created_at=row["created_at"],  # type: ignore[arg-type]
        stages=stages,
        stage=stages[0],
    )


def _replayed(row: dict[str, object], existing: TaskRow | None) -> AdmissionResult:
    if existing is None:  # the conflicting insert was rolled back meanwhile
        return Unavailable("a request with this Idempotency-Key is in progress; retry shortly")
    if existing["request_hash"] != row["request_hash"]:
        return Conflict(
            "this Idempotency-Key was already used for a different request",
            task_id=str(existing["id"]),
        )
    return Admitted(existing, created=False)


def _as_unavailable(exc: BaseException) -> TaskManagerError:
    if isinstance(exc, TaskManagerError):
        return exc
    logger.opt(exception=exc).error("unexpected error while publishing a task")
    return Unavailable("the broker did not accept the task")
