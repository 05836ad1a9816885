"""Writing folded task changes to PostgreSQL: one statement per batch.

The batch travels as one JSON parameter (`jsonb_to_recordset`), is upserted
under the monotonic rules of `state_fold.py`, and the callback outbox rows for
tasks that just ended are inserted by the same statement, so a callback exists
exactly when its terminal state committed. A batch that ends tasks also settles
their dependants, closes finished workflows and hands their concurrency slots
on in the same transaction (`dependencies.py`, `workflow_ends.py`,
`shared/concurrency_keys.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.dispatcher import dependencies, workflow_ends
from services.dispatcher.state_fold import TaskDelta
from shared import concurrency_keys
from shared.status import TaskStatus

_RANK = "CASE {} WHEN 'waiting' THEN -1 WHEN 'scheduled' THEN -1 WHEN 'queued' THEN 0 WHEN 'processing' THEN 1 ELSE 2 END"
_TERMINAL = "('completed', 'failed', 'cancelled')"
_RECORD = """
    id uuid, run int, task_type text, kb_id text, status text, progress int, stage text, attempts int,
    error jsonb, result jsonb, started_at timestamptz, finished_at timestamptz,
    estimated_completion timestamptz, next_attempt_at timestamptz, at timestamptz
"""

# A DLQ replay: a newer run resets the row before that run's events apply.
_REQUEUE = text(f"""
UPDATE tasks AS t SET
    run = d.run, status = 'queued', progress = 0, stage = d.stage, attempts = 0, error = NULL,
    result = NULL, started_at = NULL, finished_at = NULL, estimated_completion = NULL,
    next_attempt_at = NULL, updated_at = d.at
FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS d({_RECORD})
WHERE t.id = d.id AND t.run < d.run
""").bindparams(bindparam("batch", type_=JSONB))

_UPSERT = text(f"""
WITH d AS (
    SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS d({_RECORD})
), up AS (
    INSERT INTO tasks AS t (
        id, run, task_type, kb_id, retry_limit, status, progress, stage, attempts, error, result,
        started_at, finished_at, estimated_completion, next_attempt_at, created_at, updated_at)
    SELECT id, run, task_type, kb_id, 0, status, progress, stage, attempts, error, result,
           started_at, finished_at, estimated_completion, next_attempt_at, at, at
    FROM d
    -- Rows in id order: admission locks parents in the same order (no deadlock).
    ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        status = CASE WHEN {_RANK.format("EXCLUDED.status")} > {_RANK.format("t.status")}
                      THEN EXCLUDED.status ELSE t.status END,
        progress = GREATEST(t.progress, EXCLUDED.progress),
        stage = CASE WHEN EXCLUDED.updated_at >= t.updated_at THEN EXCLUDED.stage ELSE t.stage END,
        attempts = CASE WHEN EXCLUDED.updated_at >= t.updated_at THEN EXCLUDED.attempts ELSE t.attempts END,
        estimated_completion = CASE
            WHEN EXCLUDED.status IN {_TERMINAL} THEN NULL
            WHEN EXCLUDED.updated_at >= t.updated_at THEN EXCLUDED.estimated_completion
            ELSE t.estimated_completion END,
        next_attempt_at = CASE
            WHEN EXCLUDED.status IN {_TERMINAL} THEN NULL
            WHEN EXCLUDED.updated_at >= t.updated_at THEN EXCLUDED.next_attempt_at
            ELSE t.next_attempt_at END,
        error = COALESCE(EXCLUDED.error, t.error),
        result = COALESCE(EXCLUDED.result, t.result),
        started_at = LEAST(t.started_at, EXCLUDED.started_at),
        finished_at = COALESCE(EXCLUDED.finished_at, t.finished_at),
        updated_at = GREATEST(t.updated_at, EXCLUDED.updated_at)
    -- Terminal rows are frozen for their run: the first terminal state wins.
    WHERE t.run = EXCLUDED.run AND t.status NOT IN {_TERMINAL}
    RETURNING t.id, t.run, t.status, t.task_type, t.callback_url
), outbox AS (
    INSERT INTO callbacks (task_id, run, url, next_attempt_at)
    SELECT id, run, COALESCE(callback_url, CAST(:default_callback_url AS text)), now()
    FROM up
    WHERE status IN {_TERMINAL} AND COALESCE(callback_url, CAST(:default_callback_url AS text)) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING task_id
)
SELECT CAST(up.id AS text) AS id, up.status, up.task_type,
       EXISTS (SELECT 1 FROM outbox WHERE outbox.task_id = up.id) AS callback_queued
FROM up
""").bindparams(bindparam("batch", type_=JSONB))

# Plain tasks (no children, not waiting, no workflow) stop here: one probe for all.
_LINKS = text("""
SELECT EXISTS (SELECT 1 FROM task_edges WHERE parent_id = ANY(CAST(:ids AS uuid[])) AND NOT settled)
       OR EXISTS (SELECT 1 FROM waiting_tasks WHERE task_id = ANY(CAST(:ids AS uuid[]))) AS children,
       EXISTS (SELECT 1 FROM workflow_tasks WHERE task_id = ANY(CAST(:ids AS uuid[]))) AS workflows,
       EXISTS (SELECT 1 FROM concurrency_slots WHERE task_id = ANY(CAST(:ids AS uuid[])))
       OR EXISTS (SELECT 1 FROM concurrency_waiting WHERE task_id = ANY(CAST(:ids AS uuid[]))) AS keyed
""")

_CANCELLED_AMONG = text("""
SELECT CAST(id AS text) AS id, run FROM tasks
WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'cancelled'
""")


@dataclass(frozen=True)
class Ended:
    """A task that reached a terminal state in this batch (exactly once)."""

    task_id: str
    status: TaskStatus
    task_type: str
    callback_queued: bool


class TaskStateWriter:
    def __init__(
        self, engine: AsyncEngine, *, default_callback_url: str | None, on_released: Callable[[], None] = lambda: None,
        on_workflows_closed: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._on_released = on_released
        self._on_workflows_closed = on_workflows_closed
        # The upsert (with its outbox insert) is one statement, atomic on its own:
        # without a replay to apply first it needs no BEGIN/COMMIT round trips.
        self._single_statements = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._default_callback_url = default_callback_url

    async def apply(self, deltas: Sequence[TaskDelta]) -> tuple[list[Ended], list[tuple[str, int]]]:
        """Commit `deltas` atomically. Answers the tasks that ended now, and the
        (id, run) among still-running deltas whose task was already cancelled
        (their workers missed the cancel and should be told again)."""
        batch = [_record(d) for d in deltas]
        requeues = [r for r, d in zip(batch, deltas, strict=True) if d.requeued]
        params = {"batch": batch, "default_callback_url": self._default_callback_url}
        if requeues or any(d.status.is_terminal for d in deltas):
            # The reset, the upsert and the release or cancel of dependants commit together.
            async with self._engine.begin() as conn:
                if requeues:
                    await conn.execute(_REQUEUE, {"batch": requeues})
                rows = (await conn.execute(_UPSERT, params)).all()
                ended, stale = self._outcome(deltas, rows, await self._stale_cancelled(conn, deltas, rows))
                settled, workflow_callbacks, granted = await self._settle_links(conn, ended)
            if settled.released or granted:
                self._on_released()
            if workflow_callbacks:
                self._on_workflows_closed()
            return ended, stale
        async with self._single_statements.connect() as conn:
            rows = (await conn.execute(_UPSERT, params)).all()
            return self._outcome(deltas, rows, await self._stale_cancelled(conn, deltas, rows))

    async def _settle_links(
        self, conn: AsyncConnection, ended: list[Ended]
    ) -> tuple[dependencies.Settled, int, int]:
        """Dependants, workflows and concurrency slots of the tasks that just ended (`ended` grows by
        the tasks a failed parent cancelled). A new statement, so it sees edges an
        admission committed while the upsert waited for its parent's row lock."""
        nothing = dependencies.Settled([], [])
        if not ended:
            return nothing, 0, 0
        probe = (await conn.execute(_LINKS, {"ids": [e.task_id for e in ended]})).one()
        granted = 0
        if probe.keyed:
            # Their concurrency slots go to the next waiting tasks of their keys (decision 0160).
            granted = len(await concurrency_keys.free(conn, [e.task_id for e in ended]))
        settled = nothing
        if probe.children:
            settled = await dependencies.settle(
                conn, [(e.task_id, e.status) for e in ended], default_callback_url=self._default_callback_url)
            ended.extend(Ended(c.task_id, TaskStatus.CANCELLED, c.task_type, c.callback_queued)
                         for c in settled.cancelled)
        if not probe.workflows and not settled.cancelled:
            return settled, 0, granted
        return settled, await workflow_ends.close_finished(
            conn, [e.task_id for e in ended], default_callback_url=self._default_callback_url), granted

    @staticmethod
    def _outcome(deltas: Sequence[TaskDelta], rows: Sequence[Any],
                 stale: list[tuple[str, int]]) -> tuple[list[Ended], list[tuple[str, int]]]:
        ended = [
            Ended(r.id, TaskStatus(r.status), r.task_type, r.callback_queued)
            for r in rows
            if TaskStatus(r.status).is_terminal
        ]
        return ended, stale

    @staticmethod
    async def _stale_cancelled(
        conn: AsyncConnection, deltas: Sequence[TaskDelta], rows: Sequence[Any]
    ) -> list[tuple[str, int]]:
        # Deltas that changed nothing hit a frozen (terminal) row: if it was
        # cancelled, a worker is running a task it should have skipped.
        updated = {r.id for r in rows}
        unchanged = [d.task_id for d in deltas if not d.status.is_terminal and d.task_id not in updated]
        if not unchanged:
            return []
        found = await conn.execute(_CANCELLED_AMONG, {"ids": unchanged})
        return [(r.id, r.run) for r in found]


def _record(delta: TaskDelta) -> dict[str, Any]:
    return {
        "id": delta.task_id,
        "run": delta.run,
        "task_type": delta.task_type,
        "kb_id": delta.kb_id,
        "status": delta.status.value,
        "progress": delta.progress,
        "stage": delta.stage,
        "attempts": delta.attempts,
        "error": delta.error,
        "result": delta.result,
        "started_at": delta.started_at,
        "finished_at": delta.finished_at,
        "estimated_completion": delta.estimated_completion,
        "next_attempt_at": delta.next_attempt_at,
        "at": delta.at,
    }
