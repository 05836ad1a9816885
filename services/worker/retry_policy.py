"""When and where a failed attempt waits before its next try."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from shared.settings import RetrySettings
from shared.topology import RETRY_TIERS, RetryTier


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float
    factor: float
    tiers: tuple[RetryTier, ...] = RETRY_TIERS
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        return cls(base_seconds=settings.retry_backoff_base_seconds, factor=settings.retry_backoff_factor)

    def should_retry(self, failed_attempt: int, retry_limit: int) -> bool:
        """`retry_limit` retries follow the first attempt: attempts 1..retry_limit+1."""
        return failed_attempt <= retry_limit

    def delay_seconds(self, failed_attempt: int) -> float:
        """`base * factor ** (attempt - 1)`, with jitter so retries of many tasks spread out."""
        raw = self.base_seconds * self.factor ** (failed_attempt - 1)
        return raw * random.uniform(1 - self.jitter, 1 + self.jitter)

    def tier_for(self, failed_attempt: int) -> RetryTier:
        """The delay queue whose TTL is closest (on a log scale) to the computed backoff."""
        delay = self.delay_seconds(failed_attempt)
        return min(self.tiers, key=lambda tier: abs(math.log(tier.seconds / delay)))
