"""The api's response bodies as pydantic models. Handlers build their answers
from these, and the OpenAPI document is generated from the same classes, so
the contract cannot drift from what is sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.status import Priority, TaskStatus


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def body(self) -> dict[str, Any]:
        """For the JSON answer: optional fields that were not set are left out."""
        return self.model_dump(exclude_unset=True)


class FieldProblem(_Body):
    field: str = Field(description="Dotted path of the offending field, e.g. `payload.seconds`.")
    message: str


class ErrorInfo(_Body):
    code: str = Field(description="Stable machine-readable code, e.g. `validation_error`, `unauthorized`.")
    message: str
    details: list[FieldProblem] | None = None


class ErrorResponse(_Body):
    """Every 4xx/5xx answer has this shape."""

    error: ErrorInfo


class TaskCreated(_Body):
    task_id: str
    status: TaskStatus
    created_at: datetime
    run_at: datetime | None = Field(default=None, description="When a delayed (`scheduled`) task is due.")
    created: bool | None = Field(default=None, description="False when an Idempotency-Key or unique_key "
                                                           "returned an earlier task.")


class CallbackState(_Body):
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None


class TaskView(_Body):
    task_id: str
    task_type: str
    kb_id: str | None
    status: TaskStatus
    progress: int = Field(ge=0, le=100)
    stage: str | None
    priority: Priority
    attempts: int
    retry_limit: int
    run: int = Field(default=1, ge=1, description="1 for the first run; each retry or replay starts the next.")
    created_at: datetime
    started_at: datetime | None
    estimated_completion: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    result: Any = None
    error: dict[str, Any] | None
    callback: CallbackState | None = Field(default=None, description="Present once a callback is due.")
    cancel_requested: bool | None = Field(default=None, description="Set on a 202 answer to a cancel.")
    run_at: datetime | None = Field(default=None, description="When a delayed task is (or was) due.")
    concurrency_key: str | None = Field(
        default=None, description="The key whose slots this task takes (a document task's is its document's).")
    max_concurrency: int | None = Field(default=None, description="That key's limit as this task sees it.")
    depends_on: list[str] = Field(
        default_factory=list, description="The parent task ids this task waited (or waits) for, oldest first; "
        "empty for a task without parents.")
    payload: Any = Field(default=None, description="Read one task: its payload, values under secret-looking keys "
                                                   "(`password`, `token`, `api_key`, ...) masked as `***`.")


class Identity(_Body):
    name: str
    anonymous: bool = Field(description="No key was sent and AUTH_REQUIRED is off: every scope.")
    scopes: list[str]
    kb_ids: list[str] | None = Field(description="The knowledge bases the key may use; null: every one.")
    auth_required: bool


class TaskPage(_Body):
    items: list[TaskView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class BatchItemResult(_Body):
    index: int
    ok: bool
    created: bool | None = None
    task_id: str | None = None
    status: TaskStatus | None = None
    created_at: datetime | None = None
    error: ErrorInfo | None = None


class BatchResult(_Body):
    created: int
    failed: int
    message: str | None = None
    results: list[BatchItemResult]


class UploadCreated(_Body):
    file_ref: str = Field(description="Use as `payload.file_ref` in a task for the same kb_id.")
    kb_id: str
    filename: str | None
    size: int
    sha256: str
    content_type: str = Field(description="Sniffed from the bytes, not taken from the client.")
    created_at: datetime


class HealthReport(BaseModel):
    """`/health`, `/health/live`, `/health/ready`."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded", "ready", "unready"]


class DeadLetterView(_Body):
    task_id: str | None
    task_type: str | None
    kb_id: str | None
    reason: str | None
    stage: str | None
    source_queue: str | None
    attempts: int | None
    last_error: str | None
    first_failure_at: str | None
    last_failure_at: str | None
    dead_at: str | None
    replayable: bool
    body_preview: str | None = None


class DeadLetterList(_Body):
    depth: int = Field(description="Messages in tm.dead.")
    items: list[DeadLetterView]


class DeadLetterItems(_Body):
    items: list[DeadLetterView]


class SkippedReplay(_Body):
    task_id: str
    reason: str


class ReplayReport(_Body):
    replayed: list[str]
    skipped: list[SkippedReplay]


class PurgeReport(_Body):
    purged: int


class SearchHit(_Body):
    rank: int = Field(ge=1)
    score: float = Field(description="Fused rank score (hybrid) or the one mode's score.")
    vector_similarity: float | None
    keyword_score: float | None
    document_id: str
    chunk_index: int = Field(ge=0)
    chunk_id: str
    content: str
    pages: list[int]
    heading_path: list[str]
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0)
    metadata: dict[str, Any]


class SearchAnswer(_Body):
    kb_id: str
    query: str
    mode: Literal["hybrid", "vector", "keyword"] = Field(description="The mode that answered (hybrid may fall "
                                                                      "back to keyword; see warnings).")
    embedding_model: str | None
    results: list[SearchHit]
    warnings: list[str]
    took_ms: float


class _DocumentFacts(_Body):
    """What a stored document is, shown both by its own view and in the kb's list."""

    source: str | None = Field(description="The file name (upload) or path.")
    title: str | None
    content_type: str | None
    file_bytes: int | None
    pages: int | None
    characters: int | None
    chunk_count: int
    embedding_model: str | None
    embedding_dim: int | None
    metadata: dict[str, Any]


class DocumentView(_DocumentFacts):
    document_id: str
    task_id: str = Field(description="The task that wrote the current chunks.")
    created_at: datetime
    updated_at: datetime


class DocumentError(_Body):
    code: str = Field(description="The failure's type, e.g. `corrupt_file`, `no_text_layer`, `password_required`.")
    message: str
    stage: str | None = Field(description="The pipeline stage that failed.")


class DocumentTimings(_Body):
    submitted_at: datetime | None = Field(description="When the newest run was submitted.")
    started_at: datetime | None
    finished_at: datetime | None
    stage_seconds: dict[str, float] | None = Field(
        description="Seconds per pipeline stage and `total`, for a completed run.")


class DocumentListItem(_DocumentFacts):
    document_id: str | None = Field(description="Null for a run whose file_path has not been named yet "
                                                "(it failed, or waits, before `preprocess`).")
    status: Literal["queued", "processing", "ready", "failed", "cancelled"] = Field(
        description="The newest run's: queued (also delayed or waiting on a parent), processing, ready, "
                    "failed (see `error`) or cancelled.")
    searchable: bool = Field(description="Search finds its chunks (a failed re-run keeps the previous ones).")
    error: DocumentError | None
    task_id: str = Field(description="The newest run's task (the one `status` describes).")
    progress: int | None
    stage: str | None
    timings: DocumentTimings
    created_at: datetime | None = Field(description="When the document's chunks were first stored.")
    updated_at: datetime | None


class DocumentPage(_Body):
    items: list[DocumentListItem]
    next_cursor: str | None


class BulkActionResult(_Body):
    action: Literal["cancel", "retry"]
    dry_run: bool
    matched: int = Field(description="Tasks the filters select that the action applies to (at most `limit`).")
    done: int = Field(description="Tasks acted on (0 in a dry run).")
    skipped: int = Field(description="Matched but refused when acted on: changed meanwhile, or not retryable "
                                     "(its type gone, a secret in its payload).")
    task_ids: list[str] = Field(description="The ids acted on, the first `ids_shown`.")
    limit: int = Field(description="At most this many tasks per call.")
    more: bool = Field(description="More tasks match than `limit`: call again for the next ones.")
