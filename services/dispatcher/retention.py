"""The retention sweep: finished work is deleted once its retention has passed
(decision 0152).

- Workflows that ended TASK_RETENTION_SECONDS ago lose their workflow rows; their
  tasks become ordinary tasks for the next step.
- Task rows that ended TASK_RETENTION_SECONDS ago are deleted with their callback
  rows, dependency edges and unique-key claims, unless something still needs
  them: an unsettled edge (a dependant not yet released), a running workflow, a
  pending callback, an unexpired unique key, or a ready document they wrote
  (re-processing and re-embedding start from that task's payload).
- Uploads are deleted UPLOAD_RETENTION_SECONDS after the last task using them
  ended (queued or running ones keep them), or UPLOAD_UNUSED_TTL_SECONDS after
  upload when no task ever used them; an upload a schedule names is kept.
  Rows first, files after the commit: a file without a row is unreachable.

Several dispatchers may sweep at once: rows are claimed with SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatcher.scheduler import PollingLoop
from shared.settings import FileSettings, RetentionSettings

BATCH = 500

_ENDED_WORKFLOWS = text("""
SELECT w.id FROM workflows w
WHERE w.status <> 'running' AND w.finished_at < now() - make_interval(secs => :retention)
  AND NOT EXISTS (SELECT 1 FROM callbacks c WHERE c.task_id = w.id AND c.state = 'pending')
ORDER BY w.finished_at LIMIT :limit
FOR UPDATE OF w SKIP LOCKED
""")
_DROP_WORKFLOWS = (
    "DELETE FROM workflow_tasks WHERE workflow_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM callbacks WHERE task_id = ANY(CAST(:ids AS uuid[])) AND run = 0",
    "DELETE FROM workflows WHERE id = ANY(CAST(:ids AS uuid[]))",
)

# `id < :id_bound` (UUIDv7: creation time first) walks the primary key over tasks
# created before the cutoff only; a task cannot end before it was created.
_ENDED_TASKS = text("""
SELECT t.id FROM tasks t
WHERE t.id < CAST(:id_bound AS uuid)
  AND t.status IN ('completed', 'failed', 'cancelled')
  AND coalesce(t.finished_at, t.updated_at) < now() - make_interval(secs => :retention)
  AND NOT EXISTS (SELECT 1 FROM task_edges e WHERE e.parent_id = t.id AND NOT e.settled)
  AND NOT EXISTS (SELECT 1 FROM workflow_tasks wt WHERE wt.task_id = t.id)
  AND NOT EXISTS (SELECT 1 FROM callbacks c WHERE c.task_id = t.id AND c.state = 'pending')
  AND NOT EXISTS (SELECT 1 FROM unique_keys k WHERE k.task_id = t.id AND k.expires_at > now())
  AND NOT EXISTS (SELECT 1 FROM kb_documents d WHERE d.task_id = t.id AND d.state = 'ready')
ORDER BY t.id LIMIT :limit
FOR UPDATE OF t SKIP LOCKED
""")
_DROP_TASKS = (
    "DELETE FROM callbacks WHERE task_id = ANY(CAST(:ids AS uuid[])) AND run > 0",
    "DELETE FROM task_edges WHERE parent_id = ANY(CAST(:ids AS uuid[])) OR child_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM unique_keys WHERE task_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))",
)

# "Uses" = tasks whose payload names the upload; the partial index on
# (payload->>'file_ref') WHERE payload ? 'file_ref' serves both subqueries.
_EXPIRED_UPLOADS = text("""
SELECT u.file_ref FROM uploads u
WHERE NOT EXISTS (
        SELECT 1 FROM tasks t
        WHERE t.payload ? 'file_ref' AND t.payload->>'file_ref' = u.file_ref
          AND (t.status IN ('waiting', 'scheduled', 'queued', 'processing')
               OR coalesce(t.finished_at, t.updated_at) > now() - make_interval(secs => :retention)))
  -- A periodic schedule's template uses its upload at every firing (docs/scheduler.md).
  AND NOT EXISTS (SELECT 1 FROM schedules s WHERE s.task->'payload'->>'file_ref' = u.file_ref)
  AND (u.created_at < now() - make_interval(secs => :unused)
       OR EXISTS (SELECT 1 FROM tasks t WHERE t.payload ? 'file_ref' AND t.payload->>'file_ref' = u.file_ref))
ORDER BY u.created_at
LIMIT :limit
FOR UPDATE OF u SKIP LOCKED
""")
_DROP_UPLOADS = text("DELETE FROM uploads WHERE file_ref = ANY(:refs)")


@dataclass(frozen=True)
class Swept:
    workflows: int
    tasks: int
    uploads: int

    @property
    def full(self) -> bool:
        return BATCH in (self.workflows, self.tasks, self.uploads)


class RetentionSweep(PollingLoop):
    name = "the retention sweep"

    def __init__(self, engine: AsyncEngine, retention: RetentionSettings, files: FileSettings) -> None:
        super().__init__(poll_seconds=retention.sweep_interval_seconds)
        self._engine = engine
        self._retention = retention
        self._files = files
        self._store = files.upload_store_root
        self._store_warned = False

    async def run_pass(self) -> bool:
        return (await self.sweep()).full

    async def sweep(self) -> Swept:
        """One batch of each kind; uploads first, while the tasks that used them still show when they ended."""
        uploads = await self._sweep_uploads()
        workflows = await self._drop(_ENDED_WORKFLOWS, _DROP_WORKFLOWS, {})
        tasks = await self._drop(_ENDED_TASKS, _DROP_TASKS, {"id_bound": _id_bound(self._cutoff())})
        if workflows or tasks or uploads:
            logger.info("retention: deleted {} task(s), {} workflow(s), {} upload(s)", tasks, workflows, uploads)
        return Swept(workflows, tasks, uploads)

    def _cutoff(self) -> float:
        return time.time() - self._retention.task_retention_seconds

    async def _drop(self, select: TextClause, deletes: tuple[str, ...], params: dict[str, object]) -> int:
        async with self._engine.begin() as conn:
            ids = [str(r[0]) for r in await conn.execute(select, {
                "retention": self._retention.task_retention_seconds, "limit": BATCH, **params})]
            if ids:
                for statement in deletes:
                    await conn.execute(text(statement), {"ids": ids})
        return len(ids)

    async def _sweep_uploads(self) -> int:
        if not self._store.is_dir():
            if not self._store_warned:  # the files would stay behind: leave the rows too
                logger.warning("retention: the upload store {} is not visible here; uploads are not swept "
                               "(mount it in the dispatcher)", self._store)
                self._store_warned = True
            return 0
        async with self._engine.begin() as conn:
            refs = [r.file_ref for r in await conn.execute(_EXPIRED_UPLOADS, {
                "retention": self._files.upload_retention_seconds,
                "unused": self._files.upload_unused_ttl_seconds, "limit": BATCH,
            })]
            if refs:
                await conn.execute(_DROP_UPLOADS, {"refs": refs})
        await asyncio.to_thread(_remove_files, self._store, refs)
        return len(refs)


def _remove_files(root: Path, refs: list[str]) -> None:
    for ref in refs:
        shutil.rmtree(root / ref, ignore_errors=True)


def _id_bound(cutoff: float) -> str:
    """The smallest UUIDv7 of the millisecond after `cutoff`: every task created by then sorts below it."""
    ms = max(0, int(cutoff * 1000) + 1)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0x2 << 62)))
