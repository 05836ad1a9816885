"""When and how long to wait before sending a refused request again."""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRYABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """429 and 503 mean "not now": the request changed nothing and may be sent
    again. The wait is the server's `Retry-After` when it gives one, else
    exponential backoff with jitter; `max_retries=0` turns retrying off."""

    max_retries: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_seconds)
        backoff = min(self.base_seconds * 2 ** (attempt - 1), self.max_seconds)
        return backoff * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date: rare from this api; fall back to backoff
