"""Deleting uploads nobody needs any more: UPLOAD_RETENTION_SECONDS after the
last task using one ended (tasks still queued or running keep it), or
UPLOAD_UNUSED_TTL_SECONDS after upload when no task ever used it. Several api
replicas may sweep at once: rows are claimed with SKIP LOCKED."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.upload_intake import INCOMING
from shared.runtime import stop_task
from shared.settings import FileSettings

BATCH = 500
STALE_INCOMING_SECONDS = 3600

# "Uses" = tasks whose payload names the upload; the partial index on
# (payload->>'file_ref') WHERE payload ? 'file_ref' serves both subqueries.
_EXPIRED = text("""
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
_DELETE = text("DELETE FROM uploads WHERE file_ref = ANY(:refs)")


class UploadSweeper:
    def __init__(self, engine: AsyncEngine, settings: FileSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._root = settings.upload_store_root
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="upload-sweeper")

    async def stop(self) -> None:
        await stop_task(self._task, "the upload sweeper")

    async def sweep(self) -> list[str]:
        """Delete what has expired; answers the file_refs deleted."""
        async with self._engine.begin() as conn:
            refs = [r.file_ref for r in await conn.execute(_EXPIRED, {
                "retention": self._settings.upload_retention_seconds,
                "unused": self._settings.upload_unused_ttl_seconds, "limit": BATCH,
            })]
            if refs:
                await conn.execute(_DELETE, {"refs": refs})
        # Rows first, files after the commit: a file without a row is unreachable.
        await asyncio.to_thread(self._remove_files, refs)
        if refs:
            logger.info("deleted {} expired upload(s)", len(refs))
        return refs

    def _remove_files(self, refs: list[str]) -> None:
        for ref in refs:
            shutil.rmtree(self._root / ref, ignore_errors=True)
        incoming = self._root / INCOMING
        if incoming.is_dir():
            cutoff = time.time() - STALE_INCOMING_SECONDS
            for entry in incoming.iterdir():
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry, ignore_errors=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("upload sweep failed: {}", type(exc).__name__)
            await asyncio.sleep(self._settings.upload_sweep_interval_seconds)


def store_root_ready(root: Path) -> None:
    (root / INCOMING).mkdir(parents=True, exist_ok=True, mode=0o700)
