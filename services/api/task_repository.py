"""Reads and writes of task rows done by the api process.

The api writes only the initial row (read-your-writes for a GET right after a
POST); every later change arrives through events at the dispatcher."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.models import callbacks, tasks

TaskRow = Mapping[str, Any]


@dataclass(frozen=True)
class TaskFilter:
    kb_id: str | None = None
    statuses: tuple[str, ...] = ()
    task_type: str | None = None


# The knowledge bases a caller may see: None for all. Every read takes one, so
# tenant isolation lives in the queries, not in checks after them.
KbScope = frozenset[str] | None


def _in_scope(query: Any, scope: KbScope) -> Any:
    return query if scope is None else query.where(tasks.c.kb_id.in_(sorted(scope)))


async def insert_tasks(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert new rows; answers the ids actually inserted (an idempotency key
    that already exists inserts nothing)."""
    if not rows:
        return set()
    stmt = (
        pg_insert(tasks)
        .values(list(rows))
        .on_conflict_do_nothing(
            index_elements=[tasks.c.created_by, tasks.c.idempotency_key],
            index_where=tasks.c.idempotency_key.isnot(None),
        )
        .returning(tasks.c.id)
    )
    result = await conn.execute(stmt)
    return {row.id for row in result}


async def delete_tasks(conn: AsyncConnection, ids: Iterable[str]) -> None:
    ids = list(ids)
    if ids:
        await conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))


async def tasks_by_idempotency_key(conn: AsyncConnection, owner: str, keys: Iterable[str]) -> dict[str, TaskRow]:
    """Tasks `owner` created under these keys (another owner's keys are another namespace)."""
    keys = list(keys)
    if not keys:
        return {}
    result = await conn.execute(
        select(tasks).where(tasks.c.created_by == owner, tasks.c.idempotency_key.in_(keys))
    )
    return {row.idempotency_key: row._mapping for row in result}


async def get_task(conn: AsyncConnection, task_id: str, *, scope: KbScope) -> TaskRow | None:
    result = await conn.execute(_in_scope(
        select(tasks, callbacks.c.state.label("callback_state"), callbacks.c.attempts.label("callback_attempts"),
               callbacks.c.last_error.label("callback_last_error"))
        .select_from(
            tasks.outerjoin(callbacks, (callbacks.c.task_id == tasks.c.id) & (callbacks.c.run == tasks.c.run))
        )
        .where(tasks.c.id == task_id),
        scope,
    ))
    row = result.first()
    return row._mapping if row else None


async def list_tasks(
    conn: AsyncConnection, task_filter: TaskFilter, *, limit: int, before_id: str | None, scope: KbScope
) -> list[TaskRow]:
    """Newest first; `before_id` is the cursor (ids are time-ordered UUIDv7)."""
    query = _in_scope(select(tasks).order_by(tasks.c.id.desc()).limit(limit), scope)
    if task_filter.kb_id is not None:
        query = query.where(tasks.c.kb_id == task_filter.kb_id)
    if task_filter.statuses:
        query = query.where(tasks.c.status.in_(task_filter.statuses))
    if task_filter.task_type is not None:
        query = query.where(tasks.c.task_type == task_filter.task_type)
    if before_id is not None:
        query = query.where(tasks.c.id < before_id)
    result = await conn.execute(query)
    return [row._mapping for row in result]
