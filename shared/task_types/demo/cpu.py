"""`cpu`: burns CPU for `seconds` in a child process; a stand-in for a heavy
parse, showing that a timed-out or cancelled CPU-bound step is stopped."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from shared.json_types import JsonFloat
from shared.task_types.base import Payload, TaskContext, TaskType


class CpuPayload(Payload):
    seconds: JsonFloat = Field(default=1.0, ge=0, le=600)


def burn(seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    loops = 0
    while time.perf_counter() < deadline:
        loops += 1
    return loops


async def run_cpu(payload: CpuPayload, ctx: TaskContext) -> dict[str, Any]:
    loops = await ctx.run_cpu(burn, payload.seconds)
    return {"loops": loops}


TASK_TYPE = TaskType(
    name="cpu",
    payload_model=CpuPayload,
    description="Busy-loops `seconds` (<= 600) in a child process; stopped on timeout or cancel.",
    handler=run_cpu,
)
