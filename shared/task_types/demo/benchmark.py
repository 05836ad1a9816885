"""`benchmark`: does nothing, so measurements see only the fleet's own cost."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from shared.task_types.base import TaskContext, TaskType


class BenchmarkPayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


async def run_benchmark(payload: BenchmarkPayload, ctx: TaskContext) -> None:
    return None


TASK_TYPE = TaskType(
    name="benchmark",
    payload_model=BenchmarkPayload,
    description="A no-op, for throughput measurements.",
    handler=run_benchmark,
)
