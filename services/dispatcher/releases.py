"""Publishing released tasks from the `task_releases` outbox (docs/decisions/0100).

A row exists only once the transaction that made its task runnable committed.
The publisher claims rows (`FOR UPDATE SKIP LOCKED`, so several dispatchers
share them), deletes them, publishes each task to its first stage with
confirms, and commits; a publish the broker refused puts its row back. A crash
before the commit leaves the rows for the next claim. A task cancelled after
its release is dropped here, never published. A task with a concurrency key
takes a slot here or waits for one (`shared/concurrency_keys.py`); tasks
granted a slot when another ended come through this outbox too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from loguru import logger
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared import concurrency_keys, metrics
from shared.amqp.publisher import Publisher
from shared.concurrency_keys import Keyed, priority_rank
from shared.db.errors import DB_ERRORS
from shared.messages import TaskMessage
from shared.runtime import stop_task

IDLE_POLL_SECONDS = 1.0
CLAIM_LIMIT = 500

_CLAIM = text("""
WITH due AS (
    SELECT task_id FROM task_releases ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM task_releases AS r USING due WHERE r.task_id = due.task_id RETURNING r.task_id, r.message
)
SELECT CAST(g.task_id AS text) AS task_id, g.message, t.status, t.run, t.priority, t.concurrency_key,
       t.max_concurrency
FROM gone AS g LEFT JOIN tasks AS t ON t.id = g.task_id
""")

_PUT_BACK = text("""
INSERT INTO task_releases (task_id, message)
SELECT r.task_id, r.message FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(task_id uuid, message jsonb)
ON CONFLICT DO NOTHING
""").bindparams(bindparam("rows", type_=JSONB))

_WAITING = text("SELECT count(*) FROM waiting_tasks")


class ReleasePublisher:
    def __init__(self, engine: AsyncEngine, publisher: Publisher, *, context_max_bytes: int) -> None:
        self._engine = engine
        self._publisher = publisher
        self._context_max_bytes = context_max_bytes
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="release-publisher")

    async def stop(self) -> None:
        await stop_task(self._task, "the release publisher")

    async def _run(self) -> None:
        while True:
            published = 0
            try:
                published = await self.publish_due() or await self._repair_slots()
                if not published:
                    async with self._engine.connect() as conn:
                        metrics.tasks_waiting_count.set((await conn.execute(_WAITING)).scalar_one())
            except DB_ERRORS as exc:
                logger.warning("release outbox unavailable ({}); retrying", type(exc).__name__)
            if not published:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_SECONDS)

    async def publish_due(self) -> int:
        """Publish one claim of due releases; answers how many reached the broker."""
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_CLAIM, {"limit": CLAIM_LIMIT})).all()
            if not rows:
                return 0
            runnable = [r for r in rows if r.status == "queued"]
            for r in rows:
                if r.status != "queued":
                    logger.bind(task_id=r.task_id).info("dropping the release of a task now {}", r.status)
            runnable = await _take_slots(conn, runnable)
            outcomes = await asyncio.gather(
                *(self._publisher.task(self._message(r.message)) for r in runnable), return_exceptions=True)
            refused = [r for r, outcome in zip(runnable, outcomes, strict=True) if isinstance(outcome, BaseException)]
            if refused:
                logger.warning("the broker refused {} released task(s) ({}); retrying", len(refused),
                               outcomes[runnable.index(refused[0])])
                await conn.execute(_PUT_BACK, {"rows": [{"task_id": r.task_id, "message": r.message}
                                                        for r in refused]})
        published = len(runnable) - len(refused)
        metrics.tasks_released_total.labels("dependencies").inc(published)
        for r in runnable:
            if r not in refused:
                logger.bind(task_id=r.task_id).debug("released: every parent settled")
        return published

    async def _repair_slots(self) -> int:
        """When idle: the concurrency keys' safety net (decision 0160); answers the tasks it released."""
        async with self._engine.begin() as conn:
            released = await concurrency_keys.repair(conn)
        if released:
            logger.warning("concurrency keys: released {} task(s) whose key had a free slot", len(released))
        return len(released)

    def _message(self, body: dict[str, Any]) -> TaskMessage:
        context = body.get("context") or {}
        parents = context.get("parents") or {}
        if len(orjson.dumps(parents)) > self._context_max_bytes:
            # Messages stay small: the child reads large results through the API.
            context = {**context, "parents": {p: {"status": v.get("status")} for p, v in parents.items()},
                       "parents_truncated": True}
            body = {**body, "context": context}
        return TaskMessage.model_validate(body)


async def _take_slots(conn: AsyncConnection, rows: list[Any]) -> list[Any]:
    """A released task with a concurrency key takes a slot first, or waits for one (decision
    0160); a task granted a slot (moved here when one freed) already holds it."""
    keyed = [Keyed(r.task_id, r.run, r.concurrency_key, r.max_concurrency, priority_rank(r.priority), r.message)
             for r in rows if r.concurrency_key is not None]
    if not keyed:
        return rows
    outcomes = await concurrency_keys.take(conn, keyed)
    return [r for r in rows if outcomes.get(r.task_id, "granted") == "granted"]
