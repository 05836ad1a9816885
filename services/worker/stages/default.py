"""The generic `default` stage: runs simple task types through their handlers."""

from __future__ import annotations

from pydantic import ValidationError

from services.worker.attempt import AttemptContext
from services.worker.stages.base import StageHandler, StageOutput
from shared.errors import Permanent
from shared.messages import TaskMessage
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry


def build(settings: Settings, registry: TaskTypeRegistry) -> StageHandler:
    async def run_default(task: TaskMessage, ctx: AttemptContext) -> StageOutput:
        task_type = registry.get(task.task_type)
        if task_type is None or task_type.handler is None:
            raise Permanent(f"task type {task.task_type!r} has no handler on the default stage")
        try:
            payload = task_type.payload_model.model_validate(task.payload)
        except ValidationError as exc:
            raise Permanent(f"invalid payload: {exc.errors(include_url=False)[0]['msg']}") from exc
        return StageOutput(result=await task_type.handler(payload, ctx))

    return run_default
