"""`chunk`: the run's blocks become chunks (size cap, overlap, metadata).

Blocks are read in batches and chunked in a thread (the event loop keeps
serving heartbeats); chunks are copied to staging with their keyword text and
content hash (the embedding cache key). A retry starts the stage over.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from services.worker.attempt import AttemptContext
from services.worker.chunking.chunker import Chunk, Chunker
from services.worker.documents.blocks import Block
from services.worker.documents.errors import EmptyDocument
from services.worker.pipeline import staging
from services.worker.pipeline.stage import PipelineStage
from services.worker.stages.base import StageHandler, StageOutput
from shared.keywords import search_text
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry

BLOCK_BATCH = 1000


def build(settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    return ChunkStage(settings)


class ChunkStage(PipelineStage):
    name = "chunk"

    async def run(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        payload = self.payload(task)
        document = await self.staged_document(task)
        await self.plan_from_context(task, ctx)
        chunker = Chunker(payload.chunk_size, payload.chunk_overlap)
        total_blocks = max(1, document["block_count"])
        done_blocks = 0
        count = 0
        async with self.pool.acquire() as conn:
            await staging.reset_chunks(conn, task.task_id, task.run)
        async for blocks in staging.iter_blocks(self.pool, task.task_id, task.run, BLOCK_BATCH):
            chunks = await asyncio.to_thread(_chunk_batch, chunker, blocks, False)
            count = await self._copy(task, chunks, count)
            done_blocks += len(blocks)
            await ctx.progress(95 * done_blocks / total_blocks)
        count = await self._copy(task, chunker.finish(), count)
        if count == 0:
            raise EmptyDocument("the document has no text to cut into chunks")
        async with self.pool.acquire() as conn:
            await staging.set_chunk_count(conn, task.task_id, task.run, count)
        return StageOutput(context={"chunks": count})

    async def _copy(self, task: TaskMessage, chunks: list[Chunk], count: int) -> int:
        if not chunks:
            return count
        records = await asyncio.to_thread(_records, task.task_id, task.run, chunks)
        async with self.pool.acquire() as conn:
            await staging.copy_chunks(conn, records)
        return count + len(chunks)


def _chunk_batch(chunker: Chunker, blocks: list[Block], final: bool) -> list[Chunk]:
    out = []
    for block in blocks:
        out.extend(chunker.add(block))
    if final:
        out.extend(chunker.finish())
    return out


def _records(task_id: str, run: int, chunks: list[Chunk]) -> list[tuple[Any, ...]]:
    import orjson

    return [
        (task_id, run, c.index, c.content, c.char_start, c.char_end, list(c.pages), list(c.heading_path),
         orjson.dumps(c.meta).decode(), search_text(c.content), hashlib.sha256(c.content.encode()).digest())
        for c in chunks
    ]
