"""Messages on the wire: frozen, versioned pydantic values parsed once at the edge.

- `TaskMessage` travels through stage queues (`tm.tasks`, `tm.retry`, `tm.dead`).
- `TaskEvent` (a union discriminated by `kind`) travels on `tm.events`; each
  event owns its routing key. Events of one kind that a worker finishes at the
  same moment travel together as one `TaskEventBatch` (v2) under that kind's
  routing key (decision 0180); `parse_task_events` reads either.
- `ControlMessage` is broadcast on `tm.control` to every worker.

Messages carry references, never blobs: stage outputs live in storage and the
message names them in `context`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from shared.errors import PoisonMessage
from shared.ids import new_event_id
from shared.status import Priority, TaskStatus

MESSAGE_VERSION = 1
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorInfo(Frozen):
    """Why an attempt failed, in words a user understands."""

    type: str
    message: str
    retryable: bool = False
    stage: str | None = None


# --- task messages ---------------------------------------------------------------


class TaskMessage(Frozen):
    """One task on its way through its stages."""

    v: Literal[1] = 1
    task_id: str
    run: int = Field(default=1, ge=1, description="Bumped by a DLQ replay: a fresh attempt series.")
    task_type: str
    kb_id: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    retry_limit: int = Field(ge=0)
    timeout_seconds: float | None = Field(default=None, gt=0)
    created_at: datetime
    stages: tuple[str, ...] = ("default",)
    stage: str = "default"
    # References to what earlier stages produced (paths, counts, ids), never data.
    context: dict[str, Any] = Field(default_factory=dict)

    @property
    def stage_index(self) -> int:
        return self.stages.index(self.stage)

    @property
    def next_stage(self) -> str | None:
        i = self.stage_index
        return self.stages[i + 1] if i + 1 < len(self.stages) else None

    def forwarded(self, context: dict[str, Any]) -> TaskMessage:
        """The message for the next stage, carrying this stage's references."""
        next_stage = self.next_stage
        assert next_stage is not None, "the last stage has nothing to forward to"
        return self.model_copy(update={"stage": next_stage, "context": {**self.context, **context}})

    def for_run(self, run: int) -> TaskMessage:
        """The message that starts a fresh attempt series from the first stage."""
        return self.model_copy(update={"run": run, "stage": self.stages[0], "context": {}})

    @classmethod
    def parse(cls, body: bytes) -> TaskMessage:
        return _parsed(cls.model_validate_json, body, "task message")


# --- events ----------------------------------------------------------------------


class _Event(Frozen):
    v: Literal[1] = 1
    event_id: str = Field(default_factory=new_event_id)
    at: datetime = Field(default_factory=utcnow)

    @property
    def routing_key(self) -> str:
        return f"task.{self.kind}"  # type: ignore[attr-defined]


class _TaskEvent(_Event):
    task_id: str
    run: int = 1
    task_type: str
    kb_id: str | None = None
    stage: str = "default"
    attempt: int = 1


class TaskQueued(_TaskEvent):
    """A task (re)entered the queue with a new run, e.g. replayed from the DLQ."""

    kind: Literal["queued"] = "queued"


class TaskStarted(_TaskEvent):
    kind: Literal["started"] = "started"
    started_at: datetime
    progress: int = 0
    estimated_completion: datetime | None = None
    worker_id: str | None = None


class TaskProgress(_TaskEvent):
    kind: Literal["progress"] = "progress"
    progress: int = Field(ge=0, le=100)
    message: str | None = None
    estimated_completion: datetime | None = None


class TaskRetrying(_TaskEvent):
    kind: Literal["retrying"] = "retrying"
    error: ErrorInfo
    next_attempt_at: datetime
    started_at: datetime | None = None


class TaskStageCompleted(_TaskEvent):
    kind: Literal["stage_completed"] = "stage_completed"
    next_stage: str
    progress: int = Field(ge=0, le=100)
    started_at: datetime | None = None
    estimated_completion: datetime | None = None


class TaskCompleted(_TaskEvent):
    kind: Literal["completed"] = "completed"
    result: Any = None
    started_at: datetime | None = None
    finished_at: datetime


class TaskFailed(_TaskEvent):
    kind: Literal["failed"] = "failed"
    error: ErrorInfo
    started_at: datetime | None = None
    finished_at: datetime
    dead_lettered: bool = False


class TaskCancelled(_TaskEvent):
    kind: Literal["cancelled"] = "cancelled"
    reason: str = "cancelled by request"
    finished_at: datetime


class WorkerHeartbeat(_Event):
    """Sent every WORKER_HEARTBEAT_INTERVAL by each worker process; a last one
    with `state="stopped"` on a graceful stop (a killed worker just goes quiet)."""

    kind: Literal["heartbeat"] = "heartbeat"
    worker_id: str
    host: str
    pid: int
    stage: str
    pool_size: int
    active: int
    processed: int
    failed: int
    started_at: datetime
    # Listeners expire a worker after a few missed intervals of its own.
    interval_seconds: float | None = Field(default=None, gt=0)
    state: Literal["running", "draining", "stopped"] = "running"

    @property
    def routing_key(self) -> str:
        return "worker.heartbeat"


TaskEvent = Annotated[
    TaskQueued
    | TaskStarted
    | TaskProgress
    | TaskRetrying
    | TaskStageCompleted
    | TaskCompleted
    | TaskFailed
    | TaskCancelled,
    Field(discriminator="kind"),
]

# The status each event kind moves a task to.
EVENT_STATUS: dict[str, TaskStatus] = {
    "queued": TaskStatus.QUEUED,
    "started": TaskStatus.PROCESSING,
    "progress": TaskStatus.PROCESSING,
    "retrying": TaskStatus.PROCESSING,
    "stage_completed": TaskStatus.PROCESSING,
    "completed": TaskStatus.COMPLETED,
    "failed": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
}


class TaskEventBatch(Frozen):
    """Several events of one kind in one message, under that kind's routing key
    (`task.completed` carries completions, one by one or in a batch)."""

    v: Literal[2] = 2
    kind: Literal["batch"] = "batch"
    events: list[TaskEvent] = Field(min_length=1)


# Version 1 is one event, version 2 a batch: one parse reads both (a rolling
# upgrade has old and new workers publishing side by side).
def _version(value: Any) -> str:
    v = value.get("v", 1) if isinstance(value, dict) else getattr(value, "v", 1)
    # No "v" at all is an event (v1's default); an unknown version is named in the error.
    return {1: "event", 2: "batch"}.get(v, f"version {v!r}") if isinstance(v, int) else f"version {v!r}"


_TASK_EVENTS = TypeAdapter(Annotated[
    Annotated[TaskEvent, Tag("event")] | Annotated[TaskEventBatch, Tag("batch")], Discriminator(_version)])


def parse_task_events(body: bytes) -> list[TaskEvent]:
    """The events of one `tm.events` message: a single event (v1) or a batch (v2)."""
    parsed = _parsed(_TASK_EVENTS.validate_json, body, "task event")
    return parsed.events if isinstance(parsed, TaskEventBatch) else [parsed]


def task_event_batch_body(bodies: list[bytes]) -> bytes:
    """The v2 body for events already serialised one by one (cheaper than a model)."""
    return b'{"v":2,"kind":"batch","events":[' + b",".join(bodies) + b"]}"


def parse_heartbeat(body: bytes) -> WorkerHeartbeat:
    return _parsed(WorkerHeartbeat.model_validate_json, body, "worker heartbeat")


# --- control ---------------------------------------------------------------------


class CancelTask(Frozen):
    v: Literal[1] = 1
    kind: Literal["cancel"] = "cancel"
    task_id: str
    # The run cancelled; a retry's later run is not. None (older senders): every run.
    run: int | None = Field(default=None, ge=1)
    reason: str = "cancelled by request"


# One kind so far; make this a discriminated union when a second kind arrives.
ControlMessage = CancelTask


def parse_control(body: bytes) -> ControlMessage:
    return _parsed(CancelTask.model_validate_json, body, "control message")


# --- questions to the dispatcher (request/reply on tm.dispatcher.rpc) -----------------


class CancelledTasksQuery(Frozen):
    """A starting worker asks which tasks were cancelled while it was away."""

    v: Literal[1] = 1
    kind: Literal["cancelled_tasks"] = "cancelled_tasks"
    within_seconds: int = Field(default=24 * 3600, gt=0)


class CancelledTasksReply(Frozen):
    v: Literal[1] = 1
    task_ids: list[str]
    runs: list[int] | None = None  # the cancelled run of each task id, in the same order


# Anything a hostile body can make a parser raise (a nesting past pydantic's
# recursion limit, a number past its range): the message is poison, never retried.
_UNPARSABLE = (ValueError, TypeError, RecursionError)


def _parsed(validate: Callable[[bytes], T], body: bytes, what: str) -> T:
    """`validate(body)`, or PoisonMessage naming what the body is not and its first error."""
    try:
        return validate(body)
    except _UNPARSABLE as exc:
        raise PoisonMessage(f"not a valid {what}: {_first_error(exc)}") from exc


def _first_error(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"
