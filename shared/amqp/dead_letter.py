"""The headers a dead-lettered message carries, so an operator (and
`taskmgr dlq`) can tell why it is there without reading code."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.amqp import headers as h
from shared.messages import utcnow


def dead_letter_headers(
    reason: str,
    *,
    source_queue: str,
    original: Mapping[str, Any] | None = None,
    stage: str | None = None,
    last_error: str | None = None,
    attempts: int | None = None,
    first_failure_at: str | None = None,
    last_failure_at: datetime | None = None,
) -> dict[str, Any]:
    now = utcnow().isoformat()
    out: dict[str, Any] = {k: v for k, v in (original or {}).items() if k.startswith("x-tm-")}
    out.pop(h.RETRY_TIER, None)
    out[h.DEAD_REASON] = reason[:1000]
    out[h.DEAD_SOURCE_QUEUE] = source_queue
    out[h.DEAD_AT] = now
    if stage is not None:
        out[h.DEAD_STAGE] = stage
    if last_error is not None:
        out[h.LAST_ERROR] = last_error[:2000]
    if attempts is not None:
        out[h.ATTEMPT] = attempts
    if first_failure_at is not None:
        out[h.FIRST_FAILURE_AT] = first_failure_at
    out[h.LAST_FAILURE_AT] = (last_failure_at.isoformat() if last_failure_at else out.get(h.LAST_FAILURE_AT, now))
    return out
