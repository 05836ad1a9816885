"""Settling dependencies when parents end, inside the state writer's transaction
(docs/decisions/0100).

For the tasks a batch just ended, `settle` flips their unsettled edges (the
flip counts each parent once, whatever is redelivered), lowers each waiting
child's count of unfinished parents, releases a child whose count reached
zero into the `task_releases` outbox, and cancels the waiting children of a
failed or cancelled parent (`dependency_failed`), then repeats for those, so a
cascade of any depth commits with the parent's end or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.status import TaskStatus

# A task cancelled while waiting no longer needs its message (it may hold a secret).
_FORGET_WAITING = text("DELETE FROM waiting_tasks WHERE task_id = ANY(CAST(:ids AS uuid[]))")

_SETTLE_EDGES = text("""
UPDATE task_edges SET settled = true
WHERE parent_id = ANY(CAST(:ids AS uuid[])) AND NOT settled
RETURNING CAST(parent_id AS text) AS parent_id, CAST(child_id AS text) AS child_id
""")

# The children's rows are locked in id order first: two dispatchers settling
# parents of the same children lock them in one order, so neither waits on the other in a cycle.
_COUNT_DOWN = text("""
WITH d AS (
    SELECT * FROM jsonb_to_recordset(CAST(:counts AS jsonb)) AS d(task_id uuid, done int, broken int)
), locked AS (
    SELECT w.task_id FROM waiting_tasks AS w JOIN d ON d.task_id = w.task_id ORDER BY w.task_id FOR UPDATE OF w
)
UPDATE waiting_tasks AS w
SET remaining = w.remaining - d.done - CASE WHEN w.on_parent_failure = 'run' THEN d.broken ELSE 0 END
FROM d JOIN locked ON locked.task_id = d.task_id
WHERE w.task_id = d.task_id
RETURNING CAST(w.task_id AS text) AS task_id, w.remaining, w.on_parent_failure
""").bindparams(bindparam("counts", type_=JSONB))

# The released message carries its parents' outcomes in `context.parents`.
_RELEASE = text("""
WITH r AS (
    DELETE FROM waiting_tasks WHERE task_id = ANY(CAST(:ids AS uuid[])) RETURNING task_id, message
), q AS (
    UPDATE tasks AS t SET status = 'queued', updated_at = now()
    FROM r WHERE t.id = r.task_id AND t.status = 'waiting'
    RETURNING t.id
)
INSERT INTO task_releases (task_id, message)
SELECT r.task_id, jsonb_set(r.message, '{context}', COALESCE(r.message->'context', '{}'::jsonb) || jsonb_build_object(
    'parents', (SELECT jsonb_object_agg(CAST(e.parent_id AS text), jsonb_build_object(
                    'status', p.status, 'result', p.result, 'error', p.error))
                FROM task_edges e JOIN tasks p ON p.id = e.parent_id WHERE e.child_id = r.task_id)))
FROM r JOIN q ON q.id = r.task_id
ON CONFLICT DO NOTHING
RETURNING CAST(task_id AS text) AS task_id
""")

_CANCEL = text("""
WITH d AS (
    SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS d(task_id uuid, parent_id text, message text)
), gone AS (
    DELETE FROM waiting_tasks w USING d WHERE w.task_id = d.task_id
), c AS (
    UPDATE tasks AS t SET
        status = 'cancelled', finished_at = now(), updated_at = now(), estimated_completion = NULL,
        error = jsonb_build_object('type', 'dependency_failed', 'code', 'dependency_failed',
                                   'message', d.message, 'parent_id', d.parent_id, 'retryable', false)
    FROM d WHERE t.id = d.task_id AND t.status = 'waiting'
    RETURNING t.id, t.run, t.task_type, t.callback_url
), outbox AS (
    INSERT INTO callbacks (task_id, run, url, next_attempt_at)
    SELECT id, run, COALESCE(callback_url, CAST(:default_callback_url AS text)), now()
    FROM c WHERE COALESCE(callback_url, CAST(:default_callback_url AS text)) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING task_id
)
SELECT CAST(c.id AS text) AS id, c.task_type,
       EXISTS (SELECT 1 FROM outbox WHERE outbox.task_id = c.id) AS callback_queued
FROM c
""").bindparams(bindparam("rows", type_=JSONB))


_HOW = {TaskStatus.FAILED: "failed", TaskStatus.CANCELLED: "was cancelled"}


@dataclass(frozen=True)
class DependencyCancelled:
    task_id: str
    task_type: str
    callback_queued: bool


@dataclass(frozen=True)
class Settled:
    released: list[str]
    cancelled: list[DependencyCancelled]


async def settle(
    conn: AsyncConnection, ended: Sequence[tuple[str, TaskStatus]], *, default_callback_url: str | None
) -> Settled:
    """Settle the dependants of `ended` (task id, terminal status), in `conn`'s transaction."""
    released: list[str] = []
    cancelled: list[DependencyCancelled] = []
    frontier = dict(ended)
    while frontier:
        gone = [t for t, status in frontier.items() if status is TaskStatus.CANCELLED]
        if gone:
            await conn.execute(_FORGET_WAITING, {"ids": gone})
        edges = (await conn.execute(_SETTLE_EDGES, {"ids": list(frontier)})).all()
        if not edges:
            break
        counts: dict[str, dict[str, int]] = {}
        broken_parent: dict[str, tuple[str, TaskStatus]] = {}
        for edge in edges:
            count = counts.setdefault(edge.child_id, {"done": 0, "broken": 0})
            parent_status = frontier[edge.parent_id]
            if parent_status is TaskStatus.COMPLETED:
                count["done"] += 1
            else:
                count["broken"] += 1
                broken_parent.setdefault(edge.child_id, (edge.parent_id, parent_status))
        rows = (await conn.execute(_COUNT_DOWN, {"counts": [
            {"task_id": child, **count} for child, count in counts.items()]})).all()
        to_cancel = {r.task_id for r in rows if r.on_parent_failure == "cancel" and r.task_id in broken_parent}
        to_release = [r.task_id for r in rows if r.remaining <= 0 and r.task_id not in to_cancel]
        if to_release:
            released.extend(r.task_id for r in await conn.execute(_RELEASE, {"ids": to_release}))
        frontier = {}
        if to_cancel:
            cancel_rows = [
                {"task_id": child, "parent_id": broken_parent[child][0],
                 "message": f"parent task {broken_parent[child][0]} "
                            f"{_HOW[broken_parent[child][1]]}; this task will not run"}
                for child in sorted(to_cancel)
            ]
            now_cancelled = (await conn.execute(_CANCEL, {
                "rows": cancel_rows, "default_callback_url": default_callback_url})).all()
            cancelled.extend(DependencyCancelled(r.id, r.task_type, r.callback_queued) for r in now_cancelled)
            frontier = {r.id: TaskStatus.CANCELLED for r in now_cancelled}
    return Settled(released, cancelled)
