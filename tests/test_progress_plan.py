"""Progress weights and completion estimates come from observed stage rates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from services.worker.attempt import AttemptContext
from services.worker.cpu import CpuPool
from services.worker.estimates import DurationEstimator
from services.worker.pipeline.rates import StageRates
from shared.db.local_server import connect_kwargs
from shared.fleet import PIPELINE_STAGES
from shared.ids import new_task_id
from shared.messages import TaskMessage, utcnow
from shared.settings import FileSettings
from shared.task_files import TaskFiles
from tests.support.environment import TestEnvironment


class _Events:
    async def event(self, event: Any) -> None:
        return None


def _context(stage: str) -> AttemptContext:
    task = TaskMessage(task_id=new_task_id(), task_type="document_processing", kb_id="kb", retry_limit=0,
                       created_at=utcnow(), stages=PIPELINE_STAGES, stage=stage)
    return AttemptContext(task, 1, events=_Events(), estimator=DurationEstimator(), worker_id="t", cpu=CpuPool(1),
                          files=TaskFiles.from_settings(FileSettings()))


async def test_without_a_plan_stages_weigh_the_same() -> None:
    ctx = _context("embed")
    assert ctx.overall_progress(50) == 50
    assert ctx.estimated_completion(stage_done=True) is None


async def test_a_plan_weights_stages_by_expected_time_and_extends_the_estimate() -> None:
    ctx = _context("embed")
    ctx.set_plan({"preprocess": 2, "chunk": 1, "embed": 14, "store": 2, "index": 1})
    assert ctx.overall_progress(0) == 15 and ctx.overall_progress(50) == 50 and ctx.overall_progress(100) == 85
    await ctx.progress(50)
    eta = ctx.estimated_completion()
    assert eta is not None
    remaining = (eta - utcnow()).total_seconds()
    assert 3 - 1 <= remaining <= 3 + 7 + 1, "the rest of this stage (extrapolated) plus store and index"
    done = ctx.estimated_completion(stage_done=True)
    assert done is not None and abs((done - utcnow()) - timedelta(seconds=3)) < timedelta(seconds=1)


@pytest_asyncio.fixture(loop_scope="session")
async def pool(environment: TestEnvironment) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(**connect_kwargs(environment.postgres), min_size=1, max_size=2)
    await pool.execute("DELETE FROM pipeline_stage_rates")
    yield pool
    await pool.execute("DELETE FROM pipeline_stage_rates")
    await pool.close()


async def test_rates_are_learned_per_format_and_size_the_plan(pool: asyncpg.Pool) -> None:
    rates = StageRates(PIPELINE_STAGES)
    await rates.refresh(pool)
    assert rates.expected_seconds("pdf", 100_000, None) is None, "nothing observed: no plan, no invented numbers"
    timings = {"preprocess": 1.0, "chunk": 0.1, "embed": 8.0, "store": 0.5, "index": 0.1}
    await rates.record(pool, "pdf", 100_000, 50_000, timings)
    await rates.refresh(pool)
    same = rates.expected_seconds("pdf", 100_000, 50_000)
    assert same == pytest.approx(timings)
    twice = rates.expected_seconds("pdf", 200_000, None)  # characters estimated from bytes
    assert twice is not None and twice["embed"] == pytest.approx(16.0)
    other = rates.expected_seconds("docx", 100_000, 50_000)
    assert other == pytest.approx(timings), "an unseen format borrows the rates over all formats"
    await rates.record(pool, "pdf", 100_000, 50_000, {**timings, "embed": 18.0})
    await rates.refresh(pool)
    moved = rates.expected_seconds("pdf", 100_000, 50_000)
    assert moved is not None and 8.0 < moved["embed"] < 18.0, "a moving average, not the last sample"
