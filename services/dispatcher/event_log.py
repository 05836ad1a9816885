"""The recent task event log (`task_events`) that `GET /api/v1/events` reads.

The dispatcher appends every task event it consumes, before it writes the
state those events fold into; the append is idempotent (a redelivered event
is the same `event_id`, inserted once), so it needs no transaction with the
state write. Appends take a table lock held until they commit, so `seq`
order is commit order even with several dispatchers: a reader that has seen
seq N never later finds a new row below N (readers take no lock). A pruner drops events older than EVENT_LOG_RETENTION: that is the
window a stream can resume in (decision 0131).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from loguru import logger
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.messages import TaskEvent
from shared.runtime import stop_task

PRUNE_EVERY_SECONDS = 30.0
# Small slices: a prune holds off appends (the same lock) only briefly.
PRUNE_BATCH = 5_000

_APPEND = text("""
INSERT INTO task_events (event_id, task_id, run, kind, task_type, kb_id, at, data)
SELECT e.event_id, e.task_id, e.run, e.kind, e.task_type, e.kb_id, e.at, e.data
FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS e(
    event_id uuid, task_id uuid, run int, kind text, task_type text, kb_id text, at timestamptz, data jsonb)
ON CONFLICT (event_id) DO NOTHING
""").bindparams(bindparam("events", type_=JSONB))

# Conflicts with itself and with the pruner's DELETE, not with readers.
_SERIALISE = text("LOCK TABLE task_events IN SHARE ROW EXCLUSIVE MODE")

# In slices, so one prune never holds many row locks or runs for long.
_PRUNE = text("""
DELETE FROM task_events WHERE seq IN (
    SELECT seq FROM task_events WHERE recorded_at < now() - make_interval(secs => :keep) LIMIT :batch)
""")


class EventLog:
    def __init__(self, engine: AsyncEngine, *, retention_seconds: float) -> None:
        self._engine = engine
        self._retention = retention_seconds
        self._pruner: asyncio.Task[None] | None = None

    async def append(self, events: Sequence[TaskEvent]) -> None:
        if not events:
            return
        rows = [{"event_id": e.event_id, "task_id": e.task_id, "run": e.run, "kind": e.kind,
                 "task_type": e.task_type, "kb_id": e.kb_id, "at": e.at.isoformat(),
                 "data": e.model_dump(mode="json")} for e in events]
        async with self._engine.begin() as conn:
            await conn.execute(_SERIALISE)
            await conn.execute(_APPEND, {"events": rows})

    def start(self) -> None:
        self._pruner = asyncio.create_task(self._prune_forever(), name="event-log-pruner")

    async def stop(self) -> None:
        await stop_task(self._pruner, "the event log pruner")

    async def prune(self) -> int:
        dropped = 0
        while True:
            async with self._engine.begin() as conn:
                result = await conn.execute(_PRUNE, {"keep": self._retention, "batch": PRUNE_BATCH})
            dropped += result.rowcount or 0
            if (result.rowcount or 0) < PRUNE_BATCH:
                return dropped

    async def _prune_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the database may be down; the next round catches up
                dropped = await self.prune()
                if dropped:
                    logger.debug("dropped {} task events older than {:.0f}s", dropped, self._retention)
            await asyncio.sleep(min(PRUNE_EVERY_SECONDS, self._retention / 2))
