"""What every document-pipeline stage handler shares.

A stage handler is an object (StageResources) holding a database pool opened
once per worker process. Each call parses the payload, runs the stage, and
carries the stage's duration forward in the message context (`timings`), so
the last stage can report durations per stage. Before its work a stage sets
the attempt's progress plan from observed stage rates when there are any.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

import asyncpg
from pydantic import ValidationError

from services.worker.attempt import AttemptContext
from services.worker.pipeline.rates import StageRates
from services.worker.stages.base import StageOutput
from shared.db.pool import create_pool
from shared.errors import Permanent
from shared.fleet import PIPELINE_STAGES
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types.document_processing import DocumentProcessingPayload


class MissingStagingData(Permanent):
    code = "staging_missing"


class PipelineStage(ABC):
    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rates = StageRates(PIPELINE_STAGES)
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "start() opens the pool before the first message"
        return self._pool

    async def start(self) -> None:
        self._pool = await create_pool(self.settings.postgres,
                                       max_size=max(4, min(20, self.settings.worker.worker_pool_size + 2)),
                                       name="taskmgr-pipeline")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def __call__(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        started = time.monotonic()
        output = await self.run(task, ctx)
        if output.fan_out:  # the shards carry the stage's start, so its timing is the wall time of all
            return replace(output, fan_out=tuple({**c, "stage_started": time.time()} for c in output.fan_out))
        if output.hold:
            return output  # another shard is still running; the last one adds the timing
        elapsed = time.monotonic() - started
        if "stage_started" in task.context:
            elapsed = time.time() - float(task.context["stage_started"])
        timings = {**task.context.get("timings", {}), self.name: round(elapsed, 3)}
        return replace(output, context={**output.context, "timings": timings})

    @abstractmethod
    async def run(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput: ...

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def payload(task: TaskMessage) -> DocumentProcessingPayload:
        try:
            return DocumentProcessingPayload.model_validate(task.payload)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "payload"
            raise Permanent(f"invalid payload: {where}: {err['msg']}") from None

    async def staged_document(self, task: TaskMessage) -> asyncpg.Record:
        from services.worker.pipeline import staging

        row = await staging.document(self.pool, task.task_id, task.run)
        if row is None:
            raise MissingStagingData(
                "the intermediate data of this task is gone (expired, or dropped after a failure); submit it again"
            )
        return row

    async def plan(self, ctx: AttemptContext, content_type: str, file_bytes: int, characters: int | None) -> None:
        try:
            await self.rates.refresh(self.pool)
        except (asyncpg.PostgresError, OSError):
            return  # estimates are a courtesy; the work goes on without them
        expected = self.rates.expected_seconds(content_type, file_bytes, characters)
        if expected is not None:
            ctx.set_plan(expected)

    async def plan_from_context(self, task: TaskMessage, ctx: AttemptContext) -> None:
        refs: dict[str, Any] = task.context
        await self.plan(ctx, refs.get("content_type", "*"), int(refs.get("file_bytes", 0)), refs.get("characters"))
