"""Reads and writes of task rows done by the api process.

The api writes only the initial row (read-your-writes for a GET right after a
POST); every later change arrives through events at the dispatcher."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, select, text, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.models import callbacks, tasks, workflow_tasks

# A task row: SQLAlchemy's RowMapping (keyed by column name, or by the column itself) or the
# dict admission inserted. Read by name.
TaskRow = Mapping[Any, Any]


@dataclass(frozen=True)
class TaskFilter:
    kb_id: str | None = None
    statuses: tuple[str, ...] = ()
    task_type: str | None = None
    workflow_id: str | None = None


# The knowledge bases a caller may see: None for all. Every read takes one, so
# tenant isolation lives in the queries, not in checks after them.
KbScope = frozenset[str] | None


def _in_scope(query: Any, scope: KbScope) -> Any:
    return query if scope is None else query.where(tasks.c.kb_id.in_(sorted(scope)))


# One fixed statement for any number of rows: compiled once, prepared once per
# connection. (A multi-row `insert().values(rows)` is a new statement each time,
# and compiling it cost more than everything else the api does per request.)
_INSERT_SQL = """
INSERT INTO tasks AS t (
    id, run, task_type, kb_id, payload, priority, retry_limit, timeout_seconds, callback_url, status,
    progress, stage, attempts, created_at, updated_at, idempotency_key, request_hash, created_by, run_at,
    unique_key, concurrency_key, max_concurrency)
SELECT r.id, 1, r.task_type, r.kb_id, r.payload, r.priority, r.retry_limit, r.timeout_seconds, r.callback_url,
       r.status, 0, r.stage, 0, r.created_at, r.created_at, r.idempotency_key, r.request_hash, r.created_by,
       r.run_at, r.unique_key, r.concurrency_key, r.max_concurrency
FROM jsonb_to_recordset(CAST({rows} AS jsonb)) AS r(
    id uuid, task_type text, kb_id text, payload jsonb, priority text, retry_limit int, timeout_seconds float8,
    callback_url text, status text, stage text, created_at timestamptz, idempotency_key text, request_hash text,
    created_by text, run_at timestamptz, unique_key text, concurrency_key text, max_concurrency int)
-- Keys in one order in every transaction: two open at once never deadlock on them.
ORDER BY r.created_by, r.idempotency_key
-- Idempotency keys are per owner (API key): another owner's key is another namespace.
ON CONFLICT (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING CAST(t.id AS text) AS id
"""
_INSERT = text(_INSERT_SQL.format(rows=":rows")).bindparams(bindparam("rows", type_=JSONB))
# The same statement for asyncpg (admission of plain tasks, decision 0181): rows as one JSON text.
INSERT_TASKS_ASYNCPG = _INSERT_SQL.format(rows="$1")
DELETE_TASKS_ASYNCPG = "DELETE FROM tasks WHERE id = ANY(CAST($1 AS uuid[]))"



async def insert_tasks(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert new rows; answers the ids actually inserted (a row whose idempotency
    key already exists, or is taken by another row of the same call, inserts nothing)."""
    if not rows:
        return set()
    result = await conn.execute(_INSERT, {"rows": list(rows)})
    return {row.id for row in result}


async def delete_tasks(conn: AsyncConnection, ids: Iterable[str]) -> None:
    ids = list(ids)
    if ids:
        await conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))


async def tasks_by_idempotency_key(
    conn: AsyncConnection, owned_keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], TaskRow]:
    """Tasks by `(owner, idempotency key)` (another owner's keys are another namespace)."""
    pairs = sorted(set(owned_keys))
    if not pairs:
        return {}
    result = await conn.execute(
        select(tasks).where(tuple_(tasks.c.created_by, tasks.c.idempotency_key).in_(pairs))
    )
    return {(row.created_by, row.idempotency_key): row._mapping for row in result}


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


# Parents in id order: ids are UUIDv7, so that is the order they were submitted in.
_PARENTS = text("""
SELECT CAST(child_id AS text) AS child_id, array_agg(CAST(parent_id AS text) ORDER BY parent_id) AS parents
FROM task_edges WHERE child_id = ANY(CAST(:ids AS uuid[])) GROUP BY child_id
""")


async def parents_of(conn: AsyncConnection, task_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each task's `depends_on` (one indexed lookup for a page of tasks; absent: no parents)."""
    if not task_ids:
        return {}
    return {row.child_id: list(row.parents) for row in await conn.execute(_PARENTS, {"ids": list(task_ids)})}


async def list_tasks(
    conn: AsyncConnection, task_filter: TaskFilter, *, limit: int, before_id: str | None, scope: KbScope
) -> list[TaskRow]:
    """Newest first; `before_id` is the cursor (ids are time-ordered UUIDv7)."""
    query = _filtered(_in_scope(select(tasks).order_by(tasks.c.id.desc()).limit(limit), scope), task_filter)
    if before_id is not None:
        query = query.where(tasks.c.id < before_id)
    result = await conn.execute(query)
    return [row._mapping for row in result]


async def tasks_for_action(
    conn: AsyncConnection, task_filter: TaskFilter, *, eligible: frozenset[str], limit: int, scope: KbScope
) -> list[TaskRow]:
    """The tasks a bulk action would touch: the list's filters, narrowed to the
    statuses the action applies to, oldest first (a capped call takes the oldest)."""
    statuses = [s for s in (task_filter.statuses or sorted(eligible)) if s in eligible]
    query = _filtered(_in_scope(select(tasks).order_by(tasks.c.id).limit(limit), scope), task_filter)
    result = await conn.execute(query.where(tasks.c.status.in_(statuses)))
    return [row._mapping for row in result]


def _filtered(query: Any, task_filter: TaskFilter) -> Any:
    if task_filter.kb_id is not None:
        query = query.where(tasks.c.kb_id == task_filter.kb_id)
    if task_filter.statuses:
        query = query.where(tasks.c.status.in_(task_filter.statuses))
    if task_filter.task_type is not None:
        query = query.where(tasks.c.task_type == task_filter.task_type)
    if task_filter.workflow_id is not None:
        members = select(workflow_tasks.c.task_id).where(workflow_tasks.c.workflow_id == task_filter.workflow_id)
        query = query.where(tasks.c.id.in_(members))
    return query
