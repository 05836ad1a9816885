"""`fail`: fails its first `fail_times` attempts, then succeeds; or fails for good."""

from __future__ import annotations

from typing import Any

from shared.errors import Permanent, Retryable
from shared.json_types import JsonBool, json_int
from shared.task_types.base import Payload, TaskContext, TaskType


class FailPayload(Payload):
    fail_times: json_int(ge=0, le=100) = 1  # type: ignore[valid-type]
    permanent: JsonBool = False
    message: str = "failing on purpose"


async def run_fail(payload: FailPayload, ctx: TaskContext) -> dict[str, Any]:
    if payload.permanent:
        raise Permanent(payload.message)
    if ctx.attempt <= payload.fail_times:
        raise Retryable(f"{payload.message} (attempt {ctx.attempt} of {payload.fail_times} failing)")
    return {"succeeded_on_attempt": ctx.attempt}


TASK_TYPE = TaskType(
    name="fail",
    payload_model=FailPayload,
    description="Fails `fail_times` attempts with a retryable error, then succeeds; "
    "`permanent: true` fails at once without retry.",
    handler=run_fail,
)
