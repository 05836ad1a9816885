"""Typed answers of the api, mirroring the schemas of /api/v1/openapi.json
(a test in the main suite checks every model against the live document).

Unknown fields are kept (`extra="allow"`), so a newer api never breaks an
older client; `SCHEMA` names the OpenAPI component each model mirrors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

TaskStatus = Literal["waiting", "scheduled", "queued", "processing", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    SCHEMA: ClassVar[str]


class FieldProblem(Model):
    SCHEMA = "FieldProblem"
    field: str
    message: str


class ErrorInfo(Model):
    SCHEMA = "ErrorInfo"
    code: str
    message: str
    details: list[FieldProblem] | None = None


class TaskCreated(Model):
    SCHEMA = "TaskCreated"
    task_id: str
    status: TaskStatus
    created_at: datetime
    run_at: datetime | None = None  # a delayed (`scheduled`) task's due time
    created: bool | None = None  # False: an Idempotency-Key or unique_key returned an earlier task


class CallbackState(Model):
    SCHEMA = "CallbackState"
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None


class Task(Model):
    SCHEMA = "TaskView"
    task_id: str
    task_type: str
    kb_id: str | None
    status: TaskStatus
    progress: int
    stage: str | None
    priority: str
    attempts: int
    retry_limit: int
    run: int = 1
    created_at: datetime
    started_at: datetime | None
    estimated_completion: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    result: Any = None
    error: dict[str, Any] | None
    run_at: datetime | None = None  # a delayed task's due time
    concurrency_key: str | None = None  # the key whose slots it takes (docs/scheduler.md)
    max_concurrency: int | None = None
    depends_on: list[str] = []  # parent task ids, oldest first
    payload: Any = None  # get() only; values under secret-looking keys masked
    callback: CallbackState | None = None
    cancel_requested: bool | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class TaskPage(Model):
    SCHEMA = "TaskPage"
    items: list[Task]
    next_cursor: str | None


class BatchItemResult(Model):
    SCHEMA = "BatchItemResult"
    index: int
    ok: bool
    created: bool | None = None
    task_id: str | None = None
    status: TaskStatus | None = None
    created_at: datetime | None = None
    error: ErrorInfo | None = None


class BatchResult(Model):
    SCHEMA = "BatchResult"
    created: int
    failed: int
    message: str | None = None
    results: list[BatchItemResult]


class UploadCreated(Model):
    SCHEMA = "UploadCreated"
    file_ref: str
    kb_id: str
    filename: str | None
    size: int
    sha256: str
    content_type: str
    created_at: datetime


class SearchHit(Model):
    SCHEMA = "SearchHit"
    rank: int
    score: float
    vector_similarity: float | None
    keyword_score: float | None
    document_id: str
    chunk_index: int
    chunk_id: str
    content: str
    pages: list[int]
    heading_path: list[str]
    char_start: int
    char_end: int
    metadata: dict[str, Any]


class SearchAnswer(Model):
    SCHEMA = "SearchAnswer"
    kb_id: str
    query: str
    mode: Literal["hybrid", "vector", "keyword"]
    embedding_model: str | None
    results: list[SearchHit]
    warnings: list[str]
    took_ms: float


class TaskEvent(Model):
    """One message of `GET /api/v1/events`: `event` is e.g. `task.progress`,
    `data` the event as published on `tm.events`, `id` the resume position."""

    SCHEMA = ""  # not an OpenAPI component: the stream is text/event-stream
    id: str | None
    event: str
    data: dict[str, Any]

    @property
    def task_id(self) -> str | None:
        return self.data.get("task_id")

    @property
    def kind(self) -> str:
        return self.event.removeprefix("task.")


# Every model that mirrors a component of the OpenAPI document.
MIRRORED: tuple[type[Model], ...] = (FieldProblem, ErrorInfo, TaskCreated, CallbackState, Task, TaskPage,
                                     BatchItemResult, BatchResult, UploadCreated, SearchHit, SearchAnswer)
