"""How a workflow looks to API clients: the answer models (OpenAPI is built
from them) and the aggregate read (docs/decisions/0101)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api.task_repository import KbScope
from shared.messages import utcnow
from shared.status import TaskStatus

WorkflowStatus = Literal["running", "completed", "failed", "cancelled"]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkflowTaskState(_Body):
    ref: str
    task_id: str
    task_type: str
    status: TaskStatus
    progress: int = Field(ge=0, le=100)


class WorkflowCreated(_Body):
    workflow_id: str
    status: WorkflowStatus
    created_at: datetime
    tasks: dict[str, WorkflowTaskState] = Field(description="By ref.")


class WorkflowView(_Body):
    workflow_id: str
    status: WorkflowStatus = Field(description="running until every task ended; then completed (all completed), "
                                               "failed (any failed) or cancelled.")
    progress: int = Field(ge=0, le=100, description="Mean progress of the tasks (an ended task counts 100).")
    created_at: datetime
    finished_at: datetime | None
    estimated_completion: datetime | None
    counts: dict[str, int] = Field(description="Tasks by status.")
    tasks: dict[str, WorkflowTaskState] = Field(description="By ref.")
    cancel_requested: bool | None = Field(default=None, description="Set on the answer to a cancel.")


_READ = text("""
SELECT CAST(w.id AS text) AS workflow_id, w.status AS workflow_status, w.created_at AS workflow_created_at,
       w.finished_at AS workflow_finished_at, wt.ref, CAST(t.id AS text) AS task_id, t.task_type, t.kb_id,
       t.status, t.progress, t.stage, t.run, t.attempts, t.created_at, t.started_at, t.estimated_completion
FROM workflows w JOIN workflow_tasks wt ON wt.workflow_id = w.id JOIN tasks t ON t.id = wt.task_id
WHERE w.id = CAST(:id AS uuid)
ORDER BY t.id
""")


async def read_workflow(conn: AsyncConnection, workflow_id: str, *, scope: KbScope) -> list[Mapping[Any, Any]] | None:
    """The workflow's task rows, or None when it does not exist or the caller may
    not see every one of its tasks (another tenant's: exactly as not-found)."""
    rows: list[Mapping[Any, Any]] = [r._mapping for r in await conn.execute(_READ, {"id": workflow_id})]
    if not rows or (scope is not None and any(r["kb_id"] not in scope for r in rows)):
        return None
    return rows


def workflow_view(rows: Sequence[Mapping[str, Any]], **extra: Any) -> WorkflowView:
    first = rows[0]
    ended = [TaskStatus(r["status"]).is_terminal for r in rows]
    progress = [100 if done else int(r["progress"]) for r, done in zip(rows, ended, strict=True)]
    overall = sum(progress) / len(progress)
    return WorkflowView(
        workflow_id=first["workflow_id"],
        status=first["workflow_status"],
        progress=int(overall),
        created_at=first["workflow_created_at"],
        finished_at=first["workflow_finished_at"],
        estimated_completion=None if first["workflow_status"] != "running" else _estimate(rows, ended, overall),
        counts=dict(Counter(r["status"] for r in rows)),
        tasks=_states(rows),
        **extra,
    )


def created_view(workflow_id: str, created_at: datetime, rows: Sequence[Mapping[str, Any]]) -> WorkflowCreated:
    return WorkflowCreated(workflow_id=workflow_id, status="running", created_at=created_at, tasks=_states(rows))


def _states(rows: Sequence[Mapping[str, Any]]) -> dict[str, WorkflowTaskState]:
    return {r["ref"]: WorkflowTaskState(ref=r["ref"], task_id=r["task_id"], task_type=r["task_type"],
                                        status=r["status"], progress=r["progress"]) for r in rows}


def _estimate(rows: Sequence[Mapping[str, Any]], ended: list[bool], overall: float) -> datetime | None:
    """The latest estimate of the unfinished tasks when each has one; otherwise
    the elapsed time extrapolated by the progress so far (none before any)."""
    open_estimates = [r["estimated_completion"] for r, done in zip(rows, ended, strict=True) if not done]
    if open_estimates and all(e is not None for e in open_estimates):
        return max(open_estimates)  # type: ignore[no-any-return]
    if overall <= 0:
        return None
    started = rows[0]["workflow_created_at"]
    now = utcnow()
    return started + (now - started) * (100 / overall)  # type: ignore[no-any-return]
