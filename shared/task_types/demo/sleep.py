"""`sleep`: waits `seconds`, reporting progress; cancellable at any moment."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import Field

from shared.json_types import JsonFloat
from shared.task_types.base import Payload, TaskContext, TaskType


class SleepPayload(Payload):
    seconds: JsonFloat = Field(default=1.0, ge=0, le=3600)


async def run_sleep(payload: SleepPayload, ctx: TaskContext) -> dict[str, Any]:
    started = time.monotonic()
    step = min(1.0, max(payload.seconds / 10, 0.05))
    while (elapsed := time.monotonic() - started) < payload.seconds:
        await asyncio.sleep(min(step, payload.seconds - elapsed))
        await ctx.progress(100 * min(1.0, (time.monotonic() - started) / payload.seconds))
    return {"slept_seconds": round(time.monotonic() - started, 3)}


TASK_TYPE = TaskType(
    name="sleep",
    payload_model=SleepPayload,
    description="Sleeps `payload.seconds` (<= 3600), reporting progress; cancellable.",
    handler=run_sleep,
)
