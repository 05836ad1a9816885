"""Closing workflows whose last task just ended, in the state writer's
transaction (docs/decisions/0101): the status, `finished_at`, and one row in
the callback outbox keyed `(workflow_id, run 0)`."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# Locked first: two dispatchers ending a workflow's last two tasks at once
# serialise here, and the second one's next statement sees the first's commit.
_LOCK = text("""
SELECT CAST(id AS text) AS id FROM workflows
WHERE id IN (SELECT workflow_id FROM workflow_tasks WHERE task_id = ANY(CAST(:ids AS uuid[])))
  AND status = 'running'
ORDER BY id FOR UPDATE
""")

_CLOSE = text("""
WITH agg AS (
    SELECT wt.workflow_id,
           bool_and(t.status IN ('completed', 'failed', 'cancelled')) AS ended,
           bool_and(t.status = 'completed') AS all_completed,
           bool_or(t.status = 'failed') AS any_failed
    FROM workflow_tasks wt JOIN tasks t ON t.id = wt.task_id
    WHERE wt.workflow_id = ANY(CAST(:ids AS uuid[]))
    GROUP BY wt.workflow_id
), closed AS (
    UPDATE workflows AS w SET
        status = CASE WHEN agg.all_completed THEN 'completed' WHEN agg.any_failed THEN 'failed' ELSE 'cancelled' END,
        finished_at = now()
    FROM agg WHERE w.id = agg.workflow_id AND agg.ended AND w.status = 'running'
    RETURNING w.id, w.callback_url
), outbox AS (
    INSERT INTO callbacks (task_id, run, url, next_attempt_at)
    SELECT id, 0, COALESCE(callback_url, CAST(:default_callback_url AS text)), now()
    FROM closed WHERE COALESCE(callback_url, CAST(:default_callback_url AS text)) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING task_id
)
SELECT (SELECT count(*) FROM closed) AS closed, (SELECT count(*) FROM outbox) AS callbacks
""")


async def close_finished(conn: AsyncConnection, ended: Sequence[str], *, default_callback_url: str | None) -> int:
    """Close the workflows of `ended` tasks that have no unfinished task left;
    answers how many callbacks were queued."""
    if not ended:
        return 0
    running = [r.id for r in await conn.execute(_LOCK, {"ids": list(ended)})]
    if not running:
        return 0
    row = (await conn.execute(_CLOSE, {"ids": running, "default_callback_url": default_callback_url})).one()
    return int(row.callbacks)
