"""The dispatcher's answer to a worker holding a dead letter that came back by
hand: claim a new run for it, atomically, or say why not.

The claim is one UPDATE on the task's row (`run = run + 1` only while the row
is still `failed` at the dead letter's run), so two copies of the same dead
letter moved back at once start one run, never two. The worker then publishes
`task.queued` and the task, exactly as `taskmgr dlq replay` does.
"""

from __future__ import annotations

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.hand_replay import HandReplayReply, HandReplayRequest

_CLAIM = text("""
UPDATE tasks SET
    run = run + 1, status = 'queued', progress = 0, stage = :stage, attempts = 0, error = NULL,
    result = NULL, started_at = NULL, finished_at = NULL, estimated_completion = NULL,
    next_attempt_at = NULL, updated_at = now()
WHERE id = CAST(:id AS uuid) AND run = :run AND status = 'failed'
RETURNING run
""")

_ROW = text("SELECT run, status FROM tasks WHERE id = CAST(:id AS uuid)")


async def claim_hand_replay(engine: AsyncEngine, request: HandReplayRequest) -> HandReplayReply:
    params = {"id": request.task_id, "run": request.run, "stage": request.stage}
    async with engine.begin() as conn:
        claimed = (await conn.execute(_CLAIM, params)).first()
        if claimed is not None:
            logger.bind(task_id=request.task_id).warning(
                "audit: a dead letter of run {} arrived by hand ({}); replaying it as run {}",
                request.run, request.mark, claimed.run)
            return HandReplayReply(run=claimed.run)
        row = (await conn.execute(_ROW, params)).first()
    if row is None:
        refused = "the task is unknown to the database"
    elif row.run != request.run:
        refused = f"run {request.run} was already replayed (the task is on run {row.run}, {row.status})"
    else:
        refused = f"the task is {row.status}, not failed"
    logger.bind(task_id=request.task_id).warning(
        "audit: a dead letter arrived by hand ({}) and was not replayed: {}", request.mark, refused)
    return HandReplayReply(refused=refused)
