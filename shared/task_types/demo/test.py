"""`test`: the seed's curl example; returns its message."""

from __future__ import annotations

from typing import Any

from shared.task_types.base import Payload, TaskContext, TaskType


class TestPayload(Payload):
    __test__ = False  # not a pytest class
    message: str = "hello"


async def run_test(payload: TestPayload, ctx: TaskContext) -> dict[str, Any]:
    return {"message": payload.message}


TASK_TYPE = TaskType(
    name="test",
    payload_model=TestPayload,
    description="Returns its payload's message; a smoke test of the whole fleet.",
    handler=run_test,
)
