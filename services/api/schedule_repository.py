"""Reads and writes of periodic schedules done by the api process (the
dispatcher fires them: services/dispatcher/periodic.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.api.task_repository import KbScope
from shared.db.models import schedules

ScheduleRow = Mapping[Any, Any]
RECENT_FIRINGS = 10

# A firing's task is found by the idempotency key it was submitted with (on tm.submit, owner "amqp").
_RECENT = text("""
SELECT f.fire_time, f.fired_at, CAST(t.id AS text) AS task_id, t.status
FROM schedule_firings f
LEFT JOIN tasks t ON t.created_by = 'amqp' AND t.idempotency_key = f.idempotency_key
WHERE f.schedule_id = CAST(:id AS uuid)
ORDER BY f.fire_time DESC
LIMIT :limit
""")


def _in_scope(query: Any, scope: KbScope) -> Any:
    return query if scope is None else query.where(schedules.c.kb_id.in_(sorted(scope)))


async def insert_schedule(conn: AsyncConnection, row: Mapping[Any, Any]) -> None:
    await conn.execute(schedules.insert().values(**row))


async def get_schedule(conn: AsyncConnection, schedule_id: str, *, scope: KbScope) -> ScheduleRow | None:
    row = (await conn.execute(_in_scope(select(schedules).where(schedules.c.id == schedule_id), scope))).first()
    return row._mapping if row else None


async def list_schedules(conn: AsyncConnection, *, scope: KbScope, limit: int) -> list[ScheduleRow]:
    query = _in_scope(select(schedules).order_by(schedules.c.created_at).limit(limit), scope)
    return [row._mapping for row in await conn.execute(query)]


async def set_paused(
    conn: AsyncConnection, schedule_id: str, paused: bool, next_fire_at: datetime | None, now: datetime
) -> None:
    values: dict[str, Any] = {"paused": paused, "updated_at": now}
    if next_fire_at is not None:
        values["next_fire_at"] = next_fire_at
    await conn.execute(update(schedules).where(schedules.c.id == schedule_id).values(**values))


async def delete_schedule(conn: AsyncConnection, schedule_id: str) -> None:
    await conn.execute(delete(schedules).where(schedules.c.id == schedule_id))


async def recent_firings(conn: AsyncConnection, schedule_id: str) -> list[ScheduleRow]:
    result = await conn.execute(_RECENT, {"id": schedule_id, "limit": RECENT_FIRINGS})
    return [row._mapping for row in result]
