"""The broadcast that tells workers which task runs have ended, so a message of
a finished run that comes back unmarked (published by hand into a stage queue
or `tm.tasks`) is refused instead of run. See docs/decisions/0071-refusing-finished-tasks.md.

It travels on `tm.control` (fanout, transient, to whichever workers listen),
one message per dispatcher batch, never one per task.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError

from shared.errors import PoisonMessage
from shared.messages import Frozen

KIND = "finished"
REFUSAL = "task already finished; use replay"


class FinishedRuns(Frozen):
    """Runs that reached `completed` or `failed` (committed): `{task_id: run}`."""

    v: Literal[1] = 1
    kind: Literal["finished"] = "finished"
    runs: dict[str, int]


class FinishedRunsQuery(Frozen):
    """A starting worker asks which runs ended recently (answered with `FinishedRuns`)."""

    v: Literal[1] = 1
    kind: Literal["finished_runs"] = "finished_runs"
    within_seconds: int = Field(default=24 * 3600, gt=0)


def is_finished_broadcast(body: bytes) -> bool:
    return b'"kind":"finished"' in body


def parse_finished(body: bytes) -> FinishedRuns:
    try:
        return FinishedRuns.model_validate_json(body)
    except ValidationError as exc:
        raise PoisonMessage(f"not a valid finished-runs broadcast: {exc.errors()[0]['msg']}") from exc
