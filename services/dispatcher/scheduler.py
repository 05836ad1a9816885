"""The dispatcher's release loop for delayed tasks (decision 0090).

A delayed task waits as status `scheduled` with its message in `delayed_tasks`.
Every pass takes the due rows with `FOR UPDATE SKIP LOCKED` (several dispatchers
never take the same row), publishes each to its first stage, waits for the
broker's confirm, and only then flips the task to `queued` and deletes its delay
row, in the same transaction. A crash between confirm and commit republishes on
the next pass (at-least-once); a task cancelled while scheduled is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import concurrency_keys, metrics
from shared.amqp.publisher import Publisher
from shared.concurrency_keys import Keyed, priority_rank
from shared.db.errors import DB_ERRORS
from shared.messages import TaskMessage

# Rows per pass: a backlog of due tasks is drained in passes that follow each other at once.
RELEASE_BATCH = 200

_DUE = text("""
SELECT CAST(d.task_id AS text) AS task_id, d.message, t.status, t.run, t.priority, t.concurrency_key,
       t.max_concurrency
FROM delayed_tasks d LEFT JOIN tasks t ON t.id = d.task_id
WHERE d.due_at <= clock_timestamp()
ORDER BY d.due_at
LIMIT :limit
FOR UPDATE OF d SKIP LOCKED
""")

_FLIP = text("""
UPDATE tasks SET status = 'queued', updated_at = clock_timestamp()
WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'scheduled'
""")

_FORGET = text("DELETE FROM delayed_tasks WHERE task_id = ANY(CAST(:ids AS uuid[]))")



class PollingLoop:
    """A pass run every `poll_seconds` (at once again while a pass finds a full batch);
    a failing pass is logged and retried, never ends the loop."""

    name = "polling loop"

    def __init__(self, *, poll_seconds: float) -> None:
        self._poll_seconds = poll_seconds
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_pass(self) -> bool:
        """One pass; True when more work is waiting right now."""
        raise NotImplementedError

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                more = await self.run_pass()
            except DB_ERRORS as exc:
                logger.warning("{} failed: database unavailable ({})", self.name, type(exc).__name__)
                more = False
            except Exception:  # noqa: BLE001 - a broker hiccup must not end the loop; rows stay for the next pass
                logger.exception("{} failed", self.name)
                more = False
            if not more:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._poll_seconds)


class DelayedRelease(PollingLoop):
    """Publishes delayed tasks when due; `poll_seconds` bounds how late one can be."""

    name = "releasing delayed tasks"

    def __init__(self, engine: AsyncEngine, publisher: Publisher, *, poll_seconds: float) -> None:
        super().__init__(poll_seconds=poll_seconds)
        self._engine = engine
        self._publisher = publisher

    async def run_pass(self) -> bool:
        return await self.release_due() == RELEASE_BATCH

    async def release_due(self) -> int:
        """One pass; answers how many due rows it took."""
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_DUE, {"limit": RELEASE_BATCH})).all()
            if not rows:
                return 0
            live = [r for r in rows if r.status == "scheduled"]
            # Over its concurrency key's limit: queued now, published when a slot frees (decision 0160).
            slots = await concurrency_keys.take(conn, [
                Keyed(r.task_id, r.run, r.concurrency_key, r.max_concurrency, priority_rank(r.priority), r.message)
                for r in live if r.concurrency_key is not None])
            waiting = [r.task_id for r in live if slots.get(r.task_id) == "waiting"]
            live = [r for r in live if slots.get(r.task_id, "granted") == "granted"]
            messages = [TaskMessage.model_validate(r.message) for r in live]
            outcomes = await asyncio.gather(*(self._publisher.task(m) for m in messages), return_exceptions=True)
            released = []
            for message, outcome in zip(messages, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    logger.bind(task_id=message.task_id).warning("delayed task not released yet: {}", outcome)
                else:
                    released.append(message.task_id)
                    metrics.tasks_released_total.labels("delay").inc()
            dropped = [r.task_id for r in rows if r.status != "scheduled"]  # cancelled (or gone) while scheduled
            await conn.execute(_FLIP, {"ids": released + waiting})
            await conn.execute(_FORGET, {"ids": released + dropped + waiting})
        if released:
            logger.debug("released {} delayed task(s)", len(released))
        return len(rows)
