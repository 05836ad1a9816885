"""`gather`: the fan-in step of a workflow; returns what its parents produced."""

from __future__ import annotations

from typing import Any

from shared.task_types.base import Payload, TaskContext, TaskType


class GatherPayload(Payload):
    label: str | None = None


async def run_gather(payload: GatherPayload, ctx: TaskContext) -> dict[str, Any]:
    parents = ctx.parents
    return {
        "label": payload.label,
        "parents": len(parents),
        "completed": sum(1 for p in parents.values() if p.get("status") == "completed"),
        "results": {task_id: p.get("result") for task_id, p in sorted(parents.items())},
    }


TASK_TYPE = TaskType(
    name="gather",
    payload_model=GatherPayload,
    description="Returns its parents' results (read from its context): the fan-in step of a workflow.",
    handler=run_gather,
)
