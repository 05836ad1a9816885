"""A task message that comes back from `tm.dead` by hand (management UI "Move
messages", get + publish, a shovel): how to recognise one, and the question a
worker asks the dispatcher about it over `tm.dispatcher.rpc`.

See docs/decisions/0070-hand-moved-dead-letters.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from shared.amqp import headers as h
from shared.messages import Frozen
from shared.topology import DEAD_LETTER_EXCHANGE, RETRY_EXCHANGE

_DEAD_HEADERS = (h.DEAD_REASON, h.DEAD_AT, h.DEAD_SOURCE_QUEUE)
_RETRY_QUEUE_PREFIX = f"{RETRY_EXCHANGE}."


def dead_mark(headers: Mapping[str, Any]) -> str | None:
    """Why this delivery is a dead letter brought back, or None for a normal one.

    Our own `tm.dead` copies carry `x-tm-dead-*` headers. A message the broker
    dead-lettered itself (a stage queue rejecting it) carries an `x-death`
    entry of a queue other than a retry tier, or one naming `tm.dlx`; an
    expired retry's `x-death` (a `tm.retry.*` queue) is the normal way back."""
    for key in _DEAD_HEADERS:
        if headers.get(key) is not None:
            return f"{key}={_text(headers[key])[:200]}"
    for entry in headers.get("x-death") or ():
        if not isinstance(entry, Mapping):
            continue
        queue, exchange = _text(entry.get("queue")), _text(entry.get("exchange"))
        if exchange == DEAD_LETTER_EXCHANGE or (queue and not queue.startswith(_RETRY_QUEUE_PREFIX)):
            return f"x-death queue={queue} exchange={exchange} reason={_text(entry.get('reason'))}"
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


class HandReplayRequest(Frozen):
    """A worker holds a dead letter of `task_id`'s run `run` that came back by
    hand; may it start a new run? `stage` is the task's first stage."""

    v: Literal[1] = 1
    kind: Literal["hand_replay"] = "hand_replay"
    task_id: str
    run: int = Field(ge=1)
    stage: str
    mark: str = ""


class HandReplayReply(Frozen):
    """Either the new run to start (`run`), or why not (`refused`)."""

    v: Literal[1] = 1
    run: int | None = None
    refused: str | None = None
