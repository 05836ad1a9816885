"""`store`: the document's chunks go into the knowledge base, replacing its
previous ones in one transaction (also: `document_deletion` tasks).

Writes to one document are serialised by an advisory lock and ordered by
task id: the newest submitted task wins (see pipeline/kb_store.py). A retry
or a redelivery repeats the same upsert of the same deterministic chunk ids,
so it never duplicates a chunk. This worker also runs the staging janitor.
"""

from __future__ import annotations

from typing import Any

from services.worker.attempt import AttemptContext
from services.worker.pipeline import kb_store
from services.worker.pipeline.janitor import StagingJanitor
from services.worker.pipeline.stage import MissingStagingData, PipelineStage
from services.worker.stages.base import StageHandler, StageOutput
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry
from shared.task_types.document_deletion import DocumentDeletionPayload

DELETION = "document_deletion"


def build(settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    return StoreStage(settings)


class StoreStage(PipelineStage):
    name = "store"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._janitor: StagingJanitor | None = None

    async def start(self) -> None:
        await super().start()
        self._janitor = StagingJanitor(self.settings, self.pool)
        await self._janitor.start()

    async def close(self) -> None:
        if self._janitor is not None:
            await self._janitor.close()
        await super().close()

    async def run(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        if task.task_type == DELETION:
            return await self._delete(task)
        payload = self.payload(task)
        staged = await self.staged_document(task)
        await self.plan_from_context(task, ctx)
        missing = await self.pool.fetchval(
            "SELECT count(*) FROM pipeline_chunks WHERE task_id = $1 AND run = $2 AND embedding IS NULL",
            task.task_id, task.run)
        if missing:
            raise MissingStagingData(f"{missing} chunk(s) have no vector yet; the embed stage did not finish")
        refs: dict[str, Any] = task.context
        title = refs.get("title")
        shared_metadata = {**payload.metadata, "source": staged["source"], "title": title}
        async with self.pool.acquire() as conn:
            outcome = await kb_store.replace_document(
                conn, task_id=task.task_id, run=task.run, staged=staged,
                embedding_model=refs["embedding"]["key"],
                document_metadata={**payload.metadata, "warnings": refs.get("warnings", [])},
                chunk_metadata=shared_metadata, on_progress=ctx.progress,
            )
        await ctx.progress(100)
        if isinstance(outcome, kb_store.Superseded):
            return StageOutput(context={"store": {"superseded_by": outcome.by_task_id}})
        return StageOutput(context={"store": {"previous_chunk_count": outcome.previous_chunk_count}})

    async def _delete(self, task: TaskMessage) -> StageOutput:
        payload = DocumentDeletionPayload.model_validate(task.payload)
        assert task.kb_id is not None
        async with self.pool.acquire() as conn:
            outcome = await kb_store.delete_document(conn, task_id=task.task_id, kb_id=task.kb_id,
                                                     document_id=payload.document_id)
        result: dict[str, Any] = {"kb_id": task.kb_id, "document_id": payload.document_id}
        if isinstance(outcome, kb_store.Superseded):
            return StageOutput(result={**result, "deleted": False, "deleted_chunks": 0,
                                       "superseded_by": outcome.by_task_id})
        return StageOutput(result={**result, "deleted": True, "found": outcome.existed,
                                   "deleted_chunks": outcome.deleted_chunks})
