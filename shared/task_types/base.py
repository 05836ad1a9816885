"""What a task type is: a name, a payload schema, the stages it runs through,
and (for simple types run by the generic `default` stage) a plain async handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shared.task_files import TaskFiles

from pydantic import BaseModel, ConfigDict, PlainSerializer, SecretStr, SerializationInfo


class TaskContext(Protocol):
    """What a handler may use; the worker provides the implementation."""

    task_id: str
    kb_id: str | None
    task_type: str
    stage: str
    attempt: int
    # Safe access to the file the payload names (file_ref / file_path).
    files: TaskFiles
    # Outcomes of the tasks this one depends_on: {parent_id: {"status", "result", "error"}}.
    parents: Mapping[str, Any]

    async def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100) within the current stage; only rises."""

    async def run_cpu(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a CPU-bound function in a child process that is killed when the
        attempt times out or the task is cancelled."""


class Payload(BaseModel):
    """Base for payload schemas: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Handler = Callable[[Any, TaskContext], Awaitable[Any]]

REVEAL_SECRETS = {"reveal_secrets": True}


def _serialize_secret(value: SecretStr, info: SerializationInfo) -> str:
    """A secret reaches the worker (in the task message) only when the dump asks
    for it with `context=REVEAL_SECRETS`; everywhere else it stays masked."""
    if info.context and info.context.get("reveal_secrets"):
        return value.get_secret_value()
    return "**********"


# `Annotated[SecretStr, RevealedSecret]`: masked in logs, reprs and stored rows,
# revealed only in the message the worker needs it in.
RevealedSecret = PlainSerializer(_serialize_secret, return_type=str, when_used="json")


@dataclass(frozen=True)
class TaskType:
    name: str
    payload_model: type[BaseModel]
    description: str
    stages: tuple[str, ...] = ("default",)
    requires_kb_id: bool = False
    handler: Handler | None = None
    # The concurrency key every task of this type takes (max 1), from its validated payload
    # (JSON) and kb_id; clients cannot replace it (decision 0160). None: no default key.
    default_concurrency_key: Callable[[Mapping[str, Any], str | None], str] | None = None

    def __post_init__(self) -> None:
        if self.stages == ("default",) and self.handler is None:
            raise ValueError(f"task type {self.name!r} runs on the default stage but has no handler")
