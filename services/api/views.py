"""How task rows look to API clients (the seed's response shapes), built as
the response models of `schemas.py`."""

from __future__ import annotations

import re
from typing import Any

from services.api.schemas import CallbackState, TaskCreated, TaskView
from services.api.task_repository import TaskRow
from shared.concurrency_keys import visible_key

_TASK_FIELDS = (
    "task_type", "kb_id", "status", "progress", "stage", "priority", "attempts", "retry_limit", "run", "created_at",
    "started_at", "estimated_completion", "finished_at", "next_attempt_at", "result", "error", "run_at",
)


def task_created_view(row: TaskRow, created: bool | None = None) -> TaskCreated:
    """The seed's `{task_id, status, created_at}`, plus `run_at` for a delayed task and
    `created: false` for a replay (left out otherwise, so the seed's shape holds)."""
    extra: dict[str, object] = {}
    if row.get("run_at") is not None:
        extra["run_at"] = row["run_at"]
    if created is False:
        extra["created"] = False
    return TaskCreated(task_id=str(row["id"]), status=row["status"], created_at=row["created_at"], **extra)


def task_view(row: TaskRow, depends_on: list[str] | None = None, **extra: object) -> TaskView:
    fields: dict[str, object] = {name: row[name] for name in _TASK_FIELDS}
    fields["concurrency_key"] = visible_key(row.get("concurrency_key"))
    fields["max_concurrency"] = row.get("max_concurrency")
    if depends_on is not None:  # reads that looked the parents up show them, even when there are none
        fields["depends_on"] = depends_on
    if "callback_state" in row and row["callback_state"] is not None:
        fields["callback"] = CallbackState(
            state=row["callback_state"], attempts=row["callback_attempts"], last_error=row["callback_last_error"]
        )
    return TaskView(task_id=str(row["id"]), **fields, **extra)


MASK = "***"
# Keys whose values a console or a client should not echo: a payload may carry a
# source system's credentials (a download token, a callback password).
# The whole key, or its last `_`/`-` part: `access_token`, `db_password`, `API-Key`; not
# `token_count` or `max_tokens`. The console masks results with the same rule (console.js).
_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|pwd|secret|token|api[_-]?key|authorization|credentials?|private[_-]?key|cookie)$",
    re.IGNORECASE)


def redact_payload(value: Any) -> Any:
    """The payload with every value under a secret-looking key masked, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if _SECRET_KEY.search(str(k)) else redact_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_payload(v) for v in value]
    return value
