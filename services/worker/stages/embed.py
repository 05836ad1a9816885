"""`embed`: a vector for every staged chunk.

Vectors come from the embedding cache when the same text was embedded by the
same model before; the rest are embedded in batches, with the next batch read
while the current one is encoded and the previous one written. A retry
resumes where the last attempt stopped. The model loads once, when the worker
starts, and also answers search queries (`tm.rpc.embed`).
"""

from __future__ import annotations

import asyncio

import asyncpg
import orjson

from services.worker.attempt import AttemptContext
from services.worker.embedding import Embedder, create_embedder
from services.worker.embedding.base import to_pgvector
from services.worker.embedding.rpc_server import EmbedRpcServer
from services.worker.pipeline import shards, staging
from services.worker.pipeline.stage import PipelineStage
from services.worker.stages.base import StageHandler, StageOutput
from shared import metrics
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry

_FROM_CACHE = """
UPDATE pipeline_chunks c SET embedding = e.embedding
FROM embedding_cache e
WHERE c.task_id = $1 AND c.run = $2 AND c.embedding IS NULL AND e.model = $3 AND e.text_sha256 = c.content_sha256
  AND COALESCE(c.pages[1], 0) BETWEEN $4 AND $5
"""
_PENDING = """
SELECT chunk_index, content, content_sha256 FROM pipeline_chunks
WHERE task_id = $1 AND run = $2 AND embedding IS NULL AND chunk_index > $3
  AND COALESCE(pages[1], 0) BETWEEN $5 AND $6
ORDER BY chunk_index LIMIT $4
"""
_EMBEDDED = "SELECT count(*) FROM pipeline_chunks WHERE task_id = $1 AND run = $2 AND embedding IS NOT NULL"
_WRITE = """
UPDATE pipeline_chunks c SET embedding = CAST(t.e AS vector)
FROM unnest($3::int[], $4::text[]) AS t(i, e)
WHERE c.task_id = $1 AND c.run = $2 AND c.chunk_index = t.i
"""
_CACHE = """
INSERT INTO embedding_cache (model, text_sha256, embedding)
SELECT $1, t.h, CAST(t.e AS vector) FROM unnest($2::bytea[], $3::text[]) AS t(h, e)
ON CONFLICT DO NOTHING
"""


def build(settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    return EmbedStage(settings)


class EmbedStage(PipelineStage):
    name = "embed"

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        super().__init__(settings)
        self.embedder = embedder or create_embedder(settings.embedding)
        self._rpc = EmbedRpcServer(settings.amqp, self.embedder)

    async def start(self) -> None:
        await super().start()
        await self.embedder.start()
        await self._rpc.start()

    async def close(self) -> None:
        await self._rpc.close()
        await self.embedder.close()
        await super().close()

    async def run(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        document = await self.staged_document(task)
        await self.plan_from_context(task, ctx)
        key = self.embedder.cache_key
        total = document["chunk_count"] or 0
        shard = task.context.get("shard")
        async with self.pool.acquire() as conn:
            if shard is None and orjson.loads(document["metadata"]).get("embedding_model") != key:
                # Vectors of an earlier attempt by another model must not mix with this one's.
                await conn.execute("UPDATE pipeline_chunks SET embedding = NULL WHERE task_id = $1 AND run = $2",
                                   task.task_id, task.run)
                await staging.set_metadata(conn, task.task_id, task.run, embedding_model=key)
        if shard is None:
            ranges = shards.page_ranges(document["pages"] if document["content_type"] == "pdf" else None,
                                        self._shard_pages(task))
            if ranges:  # a long PDF: every free embed worker takes a page range (decision 0170)
                return StageOutput(fan_out=shards.shard_contexts(ranges))
        low, high = shards.chunk_pages(shard)
        async with self.pool.acquire() as conn:
            cached = 0
            if self.settings.embedding.cache:
                cached = int((await conn.execute(_FROM_CACHE, task.task_id, task.run, key, low, high)).split()[-1])
            done = await conn.fetchval(_EMBEDDED, task.task_id, task.run)
        run = _EmbeddingRun(self, task, ctx, total, done, (low, high))
        await run.go()
        labels = (self.embedder.backend, self.embedder.model)
        metrics.embedding_texts_total.labels(*labels, "cache").inc(cached)
        metrics.embedding_texts_total.labels(*labels, "computed").inc(run.computed)
        stats = {"cached": cached, "computed": run.computed, "truncated": run.truncated}
        if shard is not None:
            finished = await shards.mark_done(self.pool, task.task_id, task.run, self.name, shard, stats)
            if len(finished) < shard["count"]:
                await ctx.progress(99 * len(finished) / shard["count"])  # progress counts finished shards
                return StageOutput(hold=True)
            stats = {name: sum(int(s[name]) for s in finished.values()) for name in stats}
        dimension = self.embedder.dimension or await self.pool.fetchval(
            "SELECT vector_dims(embedding) FROM pipeline_chunks WHERE task_id = $1 AND run = $2 LIMIT 1",
            task.task_id, task.run)
        embedding: dict[str, object] = {
            "backend": self.embedder.backend, "model": self.embedder.model, "dimension": dimension,
            "key": self.embedder.cache_key, **stats}
        if shard is not None:
            embedding["shards"] = shard["count"]
        return StageOutput(context={"embedding": embedding})

    def _shard_pages(self, task: TaskMessage) -> int:
        asked = task.payload.get("shard_pages")
        return int(asked) if isinstance(asked, int) else self.settings.pipeline.shard_pages


class _EmbeddingRun:
    """Read ahead, embed, write behind: one reader, `concurrency + 1` embedders."""

    def __init__(self, stage: EmbedStage, task: TaskMessage, ctx: AttemptContext, total: int, done: int,
                 pages: tuple[int, int]) -> None:
        self.stage, self.task, self.ctx = stage, task, ctx
        self.pages = pages
        self.total, self.done = max(total, 1), done
        self.computed = 0
        self.truncated = 0
        self.batch_size = stage.settings.embedding.batch_size

    async def go(self) -> None:
        queue: asyncio.Queue[list[asyncpg.Record] | None] = asyncio.Queue(maxsize=2)
        workers = self.stage.settings.embedding.concurrency + 1
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(queue, workers))
                for _ in range(workers):
                    group.create_task(self._embed(queue))
        except ExceptionGroup as failed:
            # The first failure as itself: a Permanent refusal of the endpoint must stay permanent
            # (wrapped, it read as an unexpected error and was retried) and keep its message.
            raise failed.exceptions[0] from None

    async def _read(self, queue: asyncio.Queue[list[asyncpg.Record] | None], workers: int) -> None:
        last = -1
        while True:
            rows = await self.stage.pool.fetch(_PENDING, self.task.task_id, self.task.run, last, self.batch_size,
                                               *self.pages)
            if not rows:
                break
            last = rows[-1]["chunk_index"]
            await queue.put(rows)
        for _ in range(workers):
            await queue.put(None)

    async def _embed(self, queue: asyncio.Queue[list[asyncpg.Record] | None]) -> None:
        while (rows := await queue.get()) is not None:
            batch = await self.stage.embedder.embed([r["content"] for r in rows])
            vectors = [to_pgvector(v) for v in batch.vectors]
            indexes = [r["chunk_index"] for r in rows]
            async with self.stage.pool.acquire() as conn, conn.transaction():
                await conn.execute(_WRITE, self.task.task_id, self.task.run, indexes, vectors)
                if self.stage.settings.embedding.cache:
                    await conn.execute(_CACHE, self.stage.embedder.cache_key,
                                       [r["content_sha256"] for r in rows], vectors)
            self.computed += len(rows)
            self.truncated += batch.truncated
            self.done += len(rows)
            await self.ctx.progress(99 * self.done / self.total)


