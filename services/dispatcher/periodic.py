"""Firing periodic schedules (decision 0090, docs/scheduler.md).

Each pass takes the due schedules with `FOR UPDATE SKIP LOCKED`, decides which
firings to make (`shared.schedules.due_firings`: catch-up rules), records each
firing under the primary key (schedule, fire time), and submits the schedule's
task on `tm.submit` with an idempotency key naming the firing. The api admits it
like any submission. Whatever crashes where, a firing makes one task: the row
lock and the firing's key keep two dispatchers apart, and the idempotency key
makes a republished firing (a crash between the broker's confirm and the commit)
return the same task.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from loguru import logger
from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.dispatcher.scheduler import PollingLoop
from shared.amqp.publisher import Publisher
from shared.messages import utcnow
from shared.schedules import CatchUp, due_firings
from shared.topology import SUBMIT_QUEUE

SCHEDULES_PER_PASS = 50

_DUE = text("""
SELECT CAST(id AS text) AS id, cron, timezone, catch_up, task, next_fire_at
FROM schedules
WHERE NOT paused AND next_fire_at <= clock_timestamp()
ORDER BY next_fire_at
LIMIT :limit
FOR UPDATE SKIP LOCKED
""")

_FIRE = text("""
INSERT INTO schedule_firings (schedule_id, fire_time, fired_at, idempotency_key)
VALUES (CAST(:id AS uuid), :fire_time, clock_timestamp(), :key)
ON CONFLICT DO NOTHING
RETURNING 1
""")

_ADVANCE = text("""
UPDATE schedules SET next_fire_at = :next_fire_at, updated_at = clock_timestamp(),
    last_fire_at = GREATEST(last_fire_at, CAST(:last_fire_at AS timestamptz))
WHERE id = CAST(:id AS uuid)
""")


def firing_key(schedule_id: str, fire_time: datetime) -> str:
    """The idempotency key of one firing's task (on tm.submit: owner "amqp")."""
    return f"schedule:{schedule_id}:{fire_time.isoformat()}"


class ScheduleFiring(PollingLoop):
    name = "firing schedules"

    def __init__(self, engine: AsyncEngine, publisher: Publisher, *, poll_seconds: float, grace_seconds: float
                 ) -> None:
        super().__init__(poll_seconds=poll_seconds)
        self._engine = engine
        self._publisher = publisher
        self._grace = timedelta(seconds=grace_seconds)

    async def run_pass(self) -> bool:
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_DUE, {"limit": SCHEDULES_PER_PASS})).all()
            for row in rows:
                await self._fire(conn, row)
        return len(rows) == SCHEDULES_PER_PASS

    async def _fire(self, conn: AsyncConnection, row: Row[Any]) -> None:
        firings = due_firings(row.cron, row.timezone, row.next_fire_at, utcnow(), CatchUp(row.catch_up), self._grace)
        schedule_id: str = row.id
        body = orjson.dumps(row.task)
        for fire_time in firings.fire_times:
            key = firing_key(schedule_id, fire_time)
            if (await conn.execute(_FIRE, {"id": schedule_id, "fire_time": fire_time, "key": key})).first():
                # Confirmed before the firing commits; a failure rolls the pass back for a retry.
                await self._publisher.publish("", SUBMIT_QUEUE, body, message_id=key)
                logger.bind(schedule_id=schedule_id).debug("schedule fired for {}", fire_time.isoformat())
        await conn.execute(_ADVANCE, {
            "id": schedule_id, "next_fire_at": firings.next_fire_at,
            "last_fire_at": max(firings.fire_times) if firings.fire_times else None,
        })
