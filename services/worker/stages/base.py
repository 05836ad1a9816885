"""The contract of a stage: a plain async function from a task to its output.
It raises `Retryable` or `Permanent` (shared.errors); the consume loop owns
acks, retries, dead letters and events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from services.worker.attempt import AttemptContext
from shared.messages import TaskMessage


@dataclass(frozen=True)
class StageOutput:
    result: Any = None  # the task's result, when this is its last stage
    context: Mapping[str, Any] = field(default_factory=dict)  # references for the next stage
    # Sharding (docs/decisions/0170): run this stage again as one message per context given
    # here (any free worker of the stage takes each), instead of moving on.
    fan_out: tuple[Mapping[str, Any], ...] = ()
    # A shard that is not the last to finish: the task stays in this stage, nothing is forwarded.
    hold: bool = False


class StageHandler(Protocol):
    async def __call__(self, task: TaskMessage, ctx: AttemptContext) -> StageOutput: ...


@runtime_checkable
class StageResources(Protocol):
    """Optional: a stage holding resources (a model, a database engine) gets
    them ready before the first message and releases them at shutdown."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...
