"""The admission side of the scheduler (decision 0090): delayed tasks wait in
`delayed_tasks` instead of being published, and unique keys are claimed in
`unique_keys`, both inside the admission transaction.

The dispatcher releases delayed tasks when due (`services/dispatcher/scheduler.py`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api.task_repository import TaskRow
from shared.messages import TaskMessage

_INSERT_DELAYED = text("""
INSERT INTO delayed_tasks (task_id, due_at, message)
SELECT d.task_id, d.due_at, d.message
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS d(task_id uuid, due_at timestamptz, message jsonb)
""").bindparams(bindparam("rows", type_=JSONB))

# A key is free when nobody holds it, or its holder ended and its window passed.
_CLAIM = text("""
INSERT INTO unique_keys AS u (owner, unique_key, task_id, expires_at)
VALUES (:owner, :unique_key, CAST(:task_id AS uuid), :expires_at)
ON CONFLICT (owner, unique_key) DO UPDATE SET task_id = EXCLUDED.task_id, expires_at = EXCLUDED.expires_at
WHERE u.expires_at <= :now AND NOT EXISTS (
    SELECT 1 FROM tasks t WHERE t.id = u.task_id AND t.status NOT IN ('completed', 'failed', 'cancelled'))
RETURNING CAST(task_id AS text) AS task_id
""")

_HOLDER = text("""
SELECT t.* FROM unique_keys u JOIN tasks t ON t.id = u.task_id
WHERE u.owner = :owner AND u.unique_key = :unique_key
""")

# Serialises claims of one key across transactions. Without it, a claim that waited for
# another transaction's insert re-checks the holder with its statement's older snapshot,
# in which the holder's task does not exist yet, and takes the key over (two tasks).
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:owner || chr(1) || :unique_key, 0))")

_RELEASE = text("DELETE FROM unique_keys WHERE task_id = ANY(CAST(:ids AS uuid[]))")


async def insert_delayed(conn: AsyncConnection, delayed: Sequence[tuple[str, datetime, TaskMessage]]) -> None:
    """Keep each delayed task's message until the dispatcher releases it."""
    if delayed:
        rows = [{"task_id": task_id, "due_at": due_at.isoformat(), "message": message.model_dump(mode="json")}
                for task_id, due_at, message in delayed]
        await conn.execute(_INSERT_DELAYED, {"rows": rows})


async def lock_unique_keys(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> None:
    """Hold (owner, key) locks until the transaction ends, taken in one order so two
    batches sharing keys cannot deadlock; then each claim below sees committed holders."""
    for owner, unique_key in sorted(set(keys)):
        await conn.execute(_LOCK, {"owner": owner, "unique_key": unique_key})


async def claim_unique_key(
    conn: AsyncConnection, row: Mapping[str, Any], window_seconds: int | None, now: datetime
) -> TaskRow | None:
    """Claim `row`'s unique key for it; None if claimed, else the task holding the key.

    The insert waits for another transaction claiming the same key, so exactly one wins."""
    params = {"owner": row["created_by"], "unique_key": row["unique_key"], "task_id": str(row["id"]),
              "expires_at": now + timedelta(seconds=window_seconds or 0), "now": now}
    if (await conn.execute(_CLAIM, params)).first() is not None:
        return None
    holder = (await conn.execute(_HOLDER, params)).first()
    return holder._mapping if holder is not None else None


async def release_unique_keys(conn: AsyncConnection, task_ids: Sequence[str]) -> None:
    """Free the keys of tasks that were not created after all (a refused publish)."""
    if task_ids:
        await conn.execute(_RELEASE, {"ids": list(task_ids)})
