"""Which task a message that cannot be parsed belongs to, when that can still
be read: a poison task message must not leave its record `queued` for ever.

Only the top-level identity fields are read, leniently, from a body that
failed full validation (nested past pydantic's limit, a bad field elsewhere).
orjson decodes natively, so a hostile body cannot make this recurse.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) <= 36


@dataclass(frozen=True)
class TaskIdentity:
    task_id: str
    task_type: str
    run: int = 1
    kb_id: str | None = None


def recover_identity(body: bytes) -> TaskIdentity | None:
    """The task a body names, or None when it names none readably."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    task_id, task_type = data.get("task_id"), data.get("task_type")
    run, kb_id = data.get("run", 1), data.get("kb_id")
    if not (isinstance(task_id, str) and _is_uuid(task_id) and isinstance(task_type, str)
            and 0 < len(task_type) <= 64):
        return None
    return TaskIdentity(
        task_id=task_id,
        task_type=task_type,
        run=run if isinstance(run, int) and not isinstance(run, bool) and run > 0 else 1,
        kb_id=kb_id if isinstance(kb_id, str) and len(kb_id) <= 128 else None,
    )
