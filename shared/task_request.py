"""What a client sends to create a task, over REST or on `tm.submit`, and the
one validation both ways go through.

Validation answers every problem at once, each naming its field
(`payload.seconds`, `priority`, ...), so a caller can fix a request in one go.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from shared.concurrency_keys import MAX_CONCURRENCY, scoped_key
from shared.errors import FieldError, InvalidRequest
from shared.json_limits import check_json_shape
from shared.json_types import JsonFloat, json_int
from shared.status import Priority
from shared.task_limits import STOCK_MAX_TASK_TIMEOUT, TIMEOUT_SECONDS_CEILING
from shared.task_types import TaskType, TaskTypeRegistry
from shared.task_types.base import REVEAL_SECRETS

# Fields the server owns; a client sending them gets a clear 422.
SERVER_OWNED_FIELDS = frozenset(
    {
        "task_id",
        "id",
        "status",
        "progress",
        "attempts",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "estimated_completion",
        "stage",
        "run",
    }
)

# TIMEOUT_SECONDS_CEILING bounds timeout_seconds in the schema; MAX_TASK_TIMEOUT is the
# operative limit below it (shared/task_limits.py, docs/task-length-limits.md).

KB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
# Visible ASCII only, wherever a key comes from (header, batch item, message_id): a CR or
# LF in a key would forge log lines and breaks header round trips.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
TASK_ID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
# Parents one task may name: a fan-in of 1,000 is the documented floor.
MAX_PARENTS = 10_000
UNIQUE_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
# How far ahead a task may be delayed, and how long a unique key may be held after its task ended.
MAX_DELAY_SECONDS = 366 * 86_400


class TaskRequest(BaseModel):
    """A request to run one task (the seed's `POST /api/v1/tasks` body)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    task_type: str = Field(min_length=1, max_length=64, description="One of the registered task types.")
    kb_id: str | None = Field(
        default=None,
        pattern=KB_ID_PATTERN,
        description="Knowledge base the task belongs to; required by task types that need one.",
    )
    payload: dict[str, Any] = Field(default_factory=dict, description="Input of the task type.")
    priority: Priority = Field(default=Priority.NORMAL, description="high, normal or low.")
    # Constraints sit inside the Annotated so they bind to the number, not to the `| None` union.
    retry_limit: json_int(ge=0) | None = Field(  # type: ignore[valid-type]
        default=None, description="Retries after the first attempt; default MAX_RETRY_ATTEMPTS."
    )
    timeout_seconds: Annotated[JsonFloat, Field(gt=0, le=TIMEOUT_SECONDS_CEILING)] | None = Field(
        default=None, description="Per-attempt time limit; default TASK_TIMEOUT."
    )
    callback_url: AnyHttpUrl | None = Field(
        default=None, description="POSTed when the task ends; default KB_CALLBACK_URL."
    )
    # Dependencies (docs/decisions/0100): the task waits until every parent completed.
    depends_on: list[Annotated[str, Field(pattern=TASK_ID_PATTERN)]] = Field(
        default_factory=list, max_length=MAX_PARENTS,
        description="Task ids that must complete before this task runs (status `waiting` until then).",
    )
    on_parent_failure: Literal["cancel", "run"] = Field(
        default="cancel", description="When a parent fails or is cancelled: cancel this task "
                                      "(error.code dependency_failed) or run it anyway.",
    )

    @field_validator("depends_on")
    @classmethod
    def _distinct_parents(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for parent in value:
            if parent.lower() in seen:
                raise ValueError(f"lists parent {parent} twice")
            seen.add(parent.lower())
        return [p.lower() for p in value]
    # Scheduling (decision 0090): additive, all optional.
    run_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339 time (with offset) to run at; status `scheduled` until then. "
                                  "A time in the past runs now.")
    delay_seconds: Annotated[JsonFloat, Field(ge=0, le=MAX_DELAY_SECONDS)] | None = Field(
        default=None, description="Run this many seconds after submission (instead of `run_at`).")
    unique_key: str | None = Field(
        default=None, pattern=UNIQUE_KEY_PATTERN,
        description="While a task with this key (per API key) is unfinished, or within `unique_for_seconds` "
                    "of its submission, a new submission returns that task (200, `created: false`).")
    unique_for_seconds: json_int(ge=1, le=MAX_DELAY_SECONDS) | None = Field(  # type: ignore[valid-type]
        default=None, description="Window from submission in which the key stays taken even after the task "
                                  "ended; by default only while it is unfinished.")
    # Concurrency keys (decision 0160).
    concurrency_key: str | None = Field(
        default=None, pattern=UNIQUE_KEY_PATTERN,
        description="At most `max_concurrency` tasks with this key (per API key) run at once, across every "
                    "worker; the others wait, `queued`. Document tasks are keyed by their document.")
    max_concurrency: json_int(ge=1, le=MAX_CONCURRENCY) | None = Field(  # type: ignore[valid-type]
        default=None, description="The key's limit as this task sees it; default 1 (a distributed lock).")

    def due_at(self, now: datetime) -> datetime | None:
        """When a delayed task is due, or None to run now (no delay, or a time already past)."""
        if self.run_at is not None:
            return self.run_at.astimezone(UTC) if self.run_at > now else None
        if self.delay_seconds:
            return now + timedelta(seconds=self.delay_seconds)
        return None


class BatchItem(TaskRequest):
    """One item of `POST /api/v1/tasks/batch`; may carry its own idempotency key."""

    idempotency_key: str | None = Field(
        default=None, pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1-255 visible ASCII characters (no spaces or control characters).")


@dataclass(frozen=True)
class RequestLimits:
    default_retry_limit: int
    max_retry_limit: int
    max_timeout_seconds: float = STOCK_MAX_TASK_TIMEOUT


@dataclass(frozen=True)
class ValidTask:
    """A request that passed validation, with defaults resolved."""

    request: TaskRequest
    task_type: TaskType
    payload: dict[str, Any]  # what the worker gets (secrets revealed)
    retry_limit: int
    stored_payload: dict[str, Any] | None = None  # what the task row keeps (secrets masked)

    @cached_property
    def request_hash(self) -> str:
        """Same request, same hash: tells an idempotent retry from a reused key.
        Computed on first use: only requests with an idempotency key need it."""
        return _fingerprint(self.request)

    def concurrency(self, owner: str) -> tuple[str, int] | None:
        """The scoped key whose slots this task takes, and its limit; None for none."""
        default = self.task_type.default_concurrency_key
        if default is not None:
            return scoped_key(None, default(self.payload, self.request.kb_id)), 1
        if self.request.concurrency_key is not None:
            return scoped_key(owner, self.request.concurrency_key), self.request.max_concurrency or 1
        return None

    @property
    def callback_url(self) -> str | None:
        return str(self.request.callback_url) if self.request.callback_url else None


def validate_task_request(
    data: Any,
    registry: TaskTypeRegistry,
    limits: RequestLimits,
    *,
    model: type[TaskRequest] = TaskRequest,
) -> ValidTask:
    """Validate raw JSON-decoded `data`; raise `InvalidRequest` listing every problem."""
    if not isinstance(data, dict):
        raise InvalidRequest(
            "the body must be a JSON object", [FieldError("body", f"expected an object, got {_json_type(data)}")]
        )
    # First, so nothing below (nor the database, nor the worker) walks a hostile shape.
    check_json_shape(data)
    errors = [
        FieldError(key, "is set by the server and cannot be sent")
        for key in data
        if key in SERVER_OWNED_FIELDS
    ]
    errors.extend(FieldError(path, "must not contain NUL characters (\\u0000)") for path in _nul_paths(data))
    try:
        request = model.model_validate({k: v for k, v in data.items() if k not in SERVER_OWNED_FIELDS})
    except ValidationError as exc:
        errors.extend(_field_errors(exc))
        raise InvalidRequest(_summary(errors), errors) from None
    if errors:
        raise InvalidRequest(_summary(errors), errors)

    task_type = registry.get(request.task_type)
    if task_type is None:
        known = ", ".join(sorted(registry))
        errors.append(FieldError("task_type", f"unknown task type {request.task_type!r}; known: {known}"))
        raise InvalidRequest(_summary(errors), errors)
    if task_type.requires_kb_id and not request.kb_id:
        errors.append(FieldError("kb_id", f"is required for task type {task_type.name!r}"))
    if request.retry_limit is not None and request.retry_limit > limits.max_retry_limit:
        errors.append(FieldError("retry_limit", f"must be at most {limits.max_retry_limit}"))
    errors.extend(_schedule_errors(request))
    if request.max_concurrency is not None and request.concurrency_key is None:
        errors.append(FieldError("max_concurrency", "needs a concurrency_key"))
    if request.concurrency_key is not None and task_type.default_concurrency_key is not None:
        errors.append(FieldError("concurrency_key", f"task type {task_type.name!r} is keyed by its document "
                                                    "(one run at a time); it takes no other key"))
    if request.timeout_seconds is not None and request.timeout_seconds > limits.max_timeout_seconds:
        errors.append(FieldError("timeout_seconds", f"must be at most {limits.max_timeout_seconds:g} (MAX_TASK_TIMEOUT, "
                                                    "kept under RabbitMQ's consumer_timeout)"))
    try:
        parsed = task_type.payload_model.model_validate(request.payload)
        payload = parsed.model_dump(mode="json", context=REVEAL_SECRETS)
        stored_payload = parsed.model_dump(mode="json")
    except ValidationError as exc:
        errors.extend(_field_errors(exc, prefix="payload"))
        payload = stored_payload = {}
    if not errors and (request.run_at or request.delay_seconds) and stored_payload != payload:
        errors.append(FieldError("run_at" if request.run_at else "delay_seconds",
                                 "a task whose payload holds a secret (e.g. a PDF password) cannot be delayed: "
                                 "secrets are never stored"))
    if errors:
        raise InvalidRequest(_summary(errors), errors)

    retry_limit = limits.default_retry_limit if request.retry_limit is None else request.retry_limit
    return ValidTask(
        request=request,
        task_type=task_type,
        payload=payload,
        retry_limit=retry_limit,
        stored_payload=stored_payload,
    )


def _schedule_errors(request: TaskRequest) -> list[FieldError]:
    errors = []
    if request.run_at is not None and request.delay_seconds is not None:
        errors.append(FieldError("delay_seconds", "send either run_at or delay_seconds, not both"))
    if request.run_at is not None and request.run_at > datetime.now(UTC) + timedelta(seconds=MAX_DELAY_SECONDS):
        errors.append(FieldError("run_at", f"must be at most {MAX_DELAY_SECONDS // 86_400} days ahead"))
    if request.unique_for_seconds is not None and request.unique_key is None:
        errors.append(FieldError("unique_for_seconds", "needs a unique_key"))
    if request.depends_on and (request.run_at is not None or request.delay_seconds is not None):
        # A task released by its parents has no later moment to wait for (decisions 0090, 0100).
        errors.append(FieldError("run_at" if request.run_at is not None else "delay_seconds",
                                 "cannot be combined with depends_on"))
    return errors


def _nul_paths(value: Any, path: str = "") -> list[str]:
    """Where NUL characters hide in keys or strings (PostgreSQL text and JSONB cannot hold them)."""
    if isinstance(value, str):
        return [path or "body"] if "\x00" in value else []
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found.extend([where] if "\x00" in str(key) else _nul_paths(item, where))
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_paths(item, f"{path}.{i}" if path else str(i))]
    return []


def _fingerprint(request: TaskRequest) -> str:
    body = request.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def field_errors(exc: ValidationError, prefix: str | None = None) -> list[FieldError]:
    """pydantic's errors as FieldErrors (`payload.seconds: ...`), for any model validated at an edge."""
    return _field_errors(exc, prefix)


def _field_errors(exc: ValidationError, prefix: str | None = None) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join(([prefix] if prefix else []) + loc) or (prefix or "body")
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "is required"
        elif err["type"] == "enum" and loc == ["priority"]:
            message = "must be one of: high, normal, low"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        out.append(FieldError(field, message))
    return out


def _summary(errors: list[FieldError]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
