"""Delivering the one callback of a finished workflow (docs/decisions/0101).

Workflow callbacks share the outbox table with task callbacks, keyed
`(workflow_id, run 0)`; this sender claims only those rows and sends a
workflow body, with the same signing, retries and attempt records."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
from sqlalchemy import text

from services.dispatcher.callbacks import CallbackSender, DueCallback

_CLAIM = text("""
UPDATE callbacks AS c SET next_attempt_at = now() + make_interval(secs => :lease)
FROM (
    SELECT task_id, run FROM callbacks
    WHERE state = 'pending' AND next_attempt_at <= now() AND run = 0
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AS due, workflows AS w
WHERE c.task_id = due.task_id AND c.run = due.run AND w.id = c.task_id
RETURNING CAST(c.task_id AS text) AS workflow_id, c.url, c.attempts, w.status, w.finished_at
""")

_TASKS = text("""
SELECT CAST(wt.workflow_id AS text) AS workflow_id, wt.ref, CAST(t.id AS text) AS task_id, t.status
FROM workflow_tasks wt JOIN tasks t ON t.id = wt.task_id
WHERE wt.workflow_id = ANY(CAST(:ids AS uuid[]))
""")


class WorkflowCallbackSender(CallbackSender):
    async def _claim(self, limit: int) -> list[DueCallback]:
        lease = self._settings.timeout_seconds + 30
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_CLAIM, {"limit": limit, "lease": lease})).all()
            tasks: dict[str, dict[str, Any]] = defaultdict(dict)
            if rows:
                for t in await conn.execute(_TASKS, {"ids": [r.workflow_id for r in rows]}):
                    tasks[t.workflow_id][t.ref] = {"task_id": t.task_id, "status": t.status}
        return [
            DueCallback(r.workflow_id, 0, r.url, r.attempts, orjson.dumps({
                "workflow_id": r.workflow_id, "status": r.status, "finished_at": r.finished_at,
                "tasks": tasks[r.workflow_id],
            }, option=orjson.OPT_UTC_Z), {"workflow_id": r.workflow_id})
            for r in rows
        ]
