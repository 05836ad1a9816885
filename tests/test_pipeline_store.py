"""The store's guarantees, driving the real stage handlers in-process against
the real PostgreSQL (and RabbitMQ for their side channels): a retried store
never duplicates, re-processing swaps chunk sets atomically, an older task
never overwrites a newer one, and a deletion is not undone by a late writer.
Embeddings come from the OpenAI-compatible client against the local fake, so
these tests take seconds; tests/pipeline/test_pipeline.py uses the real model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest_asyncio

from services.worker.attempt import AttemptContext
from services.worker.cpu import CpuPool
from services.worker.estimates import DurationEstimator
from services.worker.stages.base import StageOutput
from services.worker.stages.chunk import ChunkStage
from services.worker.stages.embed import EmbedStage
from services.worker.stages.index import IndexStage
from services.worker.stages.preprocess import PreprocessStage
from services.worker.stages.store import StoreStage
from shared.db.local_server import connect_kwargs
from shared.fleet import PIPELINE_STAGES
from shared.ids import new_task_id
from shared.messages import TaskMessage, utcnow
from shared.settings import Settings
from shared.task_files import TaskFiles
from shared.task_types import default_registry
from shared.topology import Topology, declare_topology
from tests.support.environment import TestEnvironment
from tests.support.fake_embeddings import FakeEmbeddingServer


@dataclass
class RecordingEvents:
    """Takes the attempt's progress events (the EventPublisher contract)."""

    events: list[Any] = field(default_factory=list)

    async def event(self, event: Any) -> None:
        self.events.append(event)


@dataclass
class Pipeline:
    stages: dict[str, Any]
    cpu: CpuPool
    root: Path
    pool: asyncpg.Pool
    files: TaskFiles

    def message(self, kb_id: str, payload: dict[str, Any], task_id: str | None = None) -> TaskMessage:
        return TaskMessage(task_id=task_id or new_task_id(), task_type="document_processing", kb_id=kb_id,
                           payload={"chunk_size": 300, "chunk_overlap": 50, **payload}, retry_limit=3,
                           created_at=utcnow(), stages=PIPELINE_STAGES, stage=PIPELINE_STAGES[0])

    async def step(self, task: TaskMessage, attempt: int = 1) -> tuple[StageOutput, TaskMessage | None]:
        ctx = AttemptContext(task, attempt, events=RecordingEvents(), estimator=DurationEstimator(),
                             worker_id="test", cpu=self.cpu, files=self.files)
        output = await self.stages[task.stage](task, ctx)
        return output, task.forwarded(dict(output.context)) if task.next_stage else None

    async def run_until(self, task: TaskMessage, stage: str) -> TaskMessage:
        """Runs the stages before `stage`; answers the message for `stage`."""
        while task.stage != stage:
            _, forwarded = await self.step(task)
            assert forwarded is not None
            task = forwarded
        return task

    async def run_all(self, task: TaskMessage) -> dict[str, Any]:
        task = await self.run_until(task, "index")
        output, _ = await self.step(task)
        return output.result  # type: ignore[no-any-return]

    def write(self, name: str, paragraphs: int, marker: str) -> str:
        text = "\n\n".join(f"{marker} paragraph {i}: the knowledge base keeps this sentence. And another one."
                           for i in range(paragraphs))
        (self.root / name).write_text(text)
        return name

    async def chunks(self, kb_id: str, document_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT chunk_index, chunk_id, task_id, content FROM kb_chunks WHERE kb_id = $1 AND document_id = $2 "
            "ORDER BY chunk_index", kb_id, document_id)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pipeline(environment: TestEnvironment, tmp_path_factory: Any) -> AsyncIterator[Pipeline]:
    root = tmp_path_factory.mktemp("uploads")
    fake = FakeEmbeddingServer(dimension=16)
    await fake.start()
    connection = await aio_pika.connect(environment.amqp_url)
    await declare_topology(await connection.channel(), Topology(default_registry(demo=True).stages()))
    await connection.close()
    settings = Settings.model_validate({
        "postgres": environment.postgres,
        "amqp": {"AMQP_URL": environment.amqp_url},
        "files": {"UPLOAD_ROOTS": str(root)},
        "embedding": {"EMBEDDING_BACKEND": "openai", "EMBEDDING_BASE_URL": fake.base_url,
                      "EMBEDDING_MODEL": fake.model, "EMBEDDING_BATCH_SIZE": 8},
    })
    stages = {"preprocess": PreprocessStage(settings), "chunk": ChunkStage(settings), "embed": EmbedStage(settings),
              "store": StoreStage(settings), "index": IndexStage(settings)}
    for stage in stages.values():
        await stage.start()
    pool = await asyncpg.create_pool(**connect_kwargs(environment.postgres), min_size=1, max_size=4)
    cpu = CpuPool(1)
    yield Pipeline(stages, cpu, root, pool, TaskFiles.from_settings(settings.files))
    cpu.close()
    await pool.close()
    for stage in stages.values():
        await stage.close()
    await fake.stop()


async def test_a_retried_store_leaves_the_same_chunks(pipeline: Pipeline) -> None:
    name = pipeline.write("retry.txt", 40, "Retry")
    task = await pipeline.run_until(pipeline.message("kb_store", {"file_path": name, "document_id": "retry"}), "store")
    await pipeline.step(task)
    first = await pipeline.chunks("kb_store", "retry")
    for attempt in (2, 3):  # a redelivery after the commit, and a retry
        await pipeline.step(task, attempt)
    again = await pipeline.chunks("kb_store", "retry")
    assert len(first) == task.context["chunks"] > 5
    assert [(r["chunk_index"], r["chunk_id"]) for r in again] == [(r["chunk_index"], r["chunk_id"]) for r in first]
    _, index_task = await pipeline.step(task)
    assert index_task is not None
    result = (await pipeline.step(index_task))[0].result
    assert result["stored"] and result["chunk_count"] == len(first)
    assert await pipeline.pool.fetchval("SELECT count(*) FROM pipeline_documents WHERE task_id = $1",
                                        task.task_id) == 0, "staging is gone once the task completes"


async def test_reprocessing_swaps_the_chunk_set_atomically(pipeline: Pipeline) -> None:
    old = pipeline.message("kb_store", {"file_path": pipeline.write("v1.txt", 60, "Old"), "document_id": "swap"})
    await pipeline.run_all(old)
    old_count = len(await pipeline.chunks("kb_store", "swap"))
    new = pipeline.message("kb_store", {"file_path": pipeline.write("v2.txt", 25, "New"), "document_id": "swap"})
    new_store = await pipeline.run_until(new, "store")
    seen: set[tuple[int, tuple[str, ...]]] = set()
    stop = asyncio.Event()

    async def watch() -> None:
        async with pipeline.pool.acquire() as conn:
            while not stop.is_set():
                row = await conn.fetchrow(
                    "SELECT count(*) AS n, array_agg(DISTINCT CAST(task_id AS text)) AS writers FROM kb_chunks "
                    "WHERE kb_id = 'kb_store' AND document_id = 'swap'")
                seen.add((row["n"], tuple(row["writers"] or ())))

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    await pipeline.step(new_store)
    await asyncio.sleep(0.05)
    stop.set()
    await watcher
    new_count = new_store.context["chunks"]
    assert old_count != new_count
    assert seen == {(old_count, (old.task_id,)), (new_count, (new.task_id,))}, "old set or new set, never a mix or none"
    contents = [r["content"] for r in await pipeline.chunks("kb_store", "swap")]
    assert contents and not any("Old" in c for c in contents)


async def test_an_older_task_never_overwrites_a_newer_one(pipeline: Pipeline) -> None:
    older_id, newer_id = new_task_id(), new_task_id()
    name = pipeline.write("race.txt", 10, "Race")
    older = await pipeline.run_until(
        pipeline.message("kb_store", {"file_path": name, "document_id": "race"}, older_id), "store")
    newer = pipeline.message("kb_store", {"file_path": pipeline.write("race2.txt", 12, "Newer"),
                                          "document_id": "race"}, newer_id)
    assert (await pipeline.run_all(newer))["stored"] is True
    _, index_task = await pipeline.step(older)  # the older task reaches store last
    assert index_task is not None
    result = (await pipeline.step(index_task))[0].result
    assert result["stored"] is False and result["superseded_by"] == newer_id
    assert {str(r["task_id"]) for r in await pipeline.chunks("kb_store", "race")} == {newer_id}


async def test_a_deletion_is_not_undone_by_an_older_task_finishing_late(pipeline: Pipeline) -> None:
    name = pipeline.write("gone.txt", 10, "Gone")
    await pipeline.run_all(pipeline.message("kb_store", {"file_path": name, "document_id": "gone"}))
    late = await pipeline.run_until(pipeline.message("kb_store", {"file_path": name, "document_id": "gone"}), "store")
    deletion = TaskMessage(task_id=new_task_id(), task_type="document_deletion", kb_id="kb_store",
                           payload={"document_id": "gone"}, retry_limit=3, created_at=utcnow(), stages=("store",),
                           stage="store")
    result = (await pipeline.step(deletion))[0].result
    assert result == {"kb_id": "kb_store", "document_id": "gone", "deleted": True, "found": True,
                      "deleted_chunks": result["deleted_chunks"]} and result["deleted_chunks"] > 0
    await pipeline.step(late)
    assert await pipeline.chunks("kb_store", "gone") == [], "the tombstone outranks the older task"
    again = (await pipeline.step(deletion, 2))[0].result
    assert again["deleted_chunks"] == 0 and again["found"] is False
