"""`echo`: returns its payload unchanged."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.task_types.base import TaskContext, TaskType


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


async def run_echo(payload: EchoPayload, ctx: TaskContext) -> dict[str, Any]:
    return payload.model_dump()


TASK_TYPE = TaskType(
    name="echo",
    payload_model=EchoPayload,
    description="Returns its payload unchanged.",
    handler=run_echo,
)
