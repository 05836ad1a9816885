"""`index`: the knowledge base is search-ready; the task's result is written.

Makes sure the HNSW index for this embedding dimension exists (the keyword
index is a GIN index maintained on write), checks the stored chunks are the
ones this task wrote, records the observed stage rates (for later progress
estimates), drops the task's intermediate data, and reports document id,
chunk count, pages, characters, embedding model and dimension and the
duration of each stage. Safe to repeat: it reads only what `store` committed.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from loguru import logger

from services.worker.attempt import AttemptContext
from services.worker.pipeline import kb_store, staging
from services.worker.pipeline.stage import PipelineStage
from services.worker.stages.base import StageHandler, StageOutput
from shared.errors import Retryable
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry


def build(settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    return IndexStage(settings)


class IndexStage(PipelineStage):
    name = "index"

    async def run(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        started = time.monotonic()
        payload = self.payload(task)
        refs: dict[str, Any] = task.context
        assert task.kb_id is not None
        document_id = refs["document_id"]
        embedding = refs["embedding"]
        if embedding.get("dimension") and await kb_store.ensure_vector_index(self.pool, int(embedding["dimension"])):
            logger.info("built the HNSW index for {}-dimensional vectors", embedding["dimension"])
        await ctx.progress(50)
        superseded_by = refs.get("store", {}).get("superseded_by")
        stored = await kb_store.document_row(self.pool, task.kb_id, document_id)
        if superseded_by is None and (stored is None or str(stored["task_id"]) != task.task_id):
            # Another task wrote the document after this one's store stage committed.
            superseded_by = str(stored["task_id"]) if stored is not None else "a deletion"
        visible = None
        if superseded_by is None:
            visible = await self.pool.fetchval(
                "SELECT count(*) FROM kb_chunks WHERE kb_id = $1 AND document_id = $2 AND task_id = $3",
                task.kb_id, document_id, task.task_id)
            if visible != refs["chunks"]:
                raise Retryable(f"the knowledge base shows {visible} of the document's {refs['chunks']} chunks")
        timings = {**refs.get("timings", {}), self.name: round(time.monotonic() - started, 3)}
        await self._record_rates(refs, timings)
        await staging.drop_task(self.pool, task.task_id)
        result = {
            "kb_id": task.kb_id,
            "document_id": document_id,
            "source": refs.get("source"),
            "title": refs.get("title"),
            "content_type": refs["content_type"],
            "file_bytes": refs["file_bytes"],
            "pages": refs.get("pages"),
            "characters": refs["characters"],
            "chunk_count": refs["chunks"],
            "chunking": {"unit": "characters", "chunk_size": payload.chunk_size,
                         "chunk_overlap": payload.chunk_overlap},
            "embedding": {key: embedding.get(key) for key in ("backend", "model", "dimension", "cached",
                                                               "computed", "truncated", "shards")
                          if key != "shards" or key in embedding},
            "stored": superseded_by is None,
            "replaced_chunks": refs.get("store", {}).get("previous_chunk_count", 0),
            "durations": {**timings, "total": round(sum(timings.values()), 3)},
            "warnings": _warnings(refs, embedding),
        }
        if superseded_by is not None:
            result["superseded_by"] = superseded_by
        return StageOutput(result=result)

    async def _record_rates(self, refs: dict[str, Any], timings: dict[str, float]) -> None:
        try:
            await self.rates.record(self.pool, refs["content_type"], int(refs["file_bytes"]),
                                    int(refs["characters"]), timings)
        except (asyncpg.PostgresError, OSError) as exc:
            logger.warning("could not record stage rates: {}", exc)


def _warnings(refs: dict[str, Any], embedding: dict[str, Any]) -> list[str]:
    warnings = list(refs.get("warnings", []))
    if embedding.get("truncated"):
        warnings.append(
            f"{embedding['truncated']} of {refs['chunks']} chunk(s) are longer than the embedding model reads; "
            "their vectors cover only their beginning (keyword search still covers all of it). A smaller "
            "chunk_size, or a model with a longer input, avoids this."
        )
    return warnings
