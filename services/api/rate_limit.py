"""Token buckets (the seed's "限流: Token Bucket"), one per API key and one per
knowledge base.

A bucket holds up to `burst` tokens and refills at `rate` per second; a request
takes its cost or is refused with the wait until it could succeed (429 +
Retry-After). Taking is synchronous, with no await between reading and
writing a bucket, so concurrent requests in one process (one event loop) share
it exactly. Each api replica has its own buckets: with N replicas behind a load
balancer a client gets up to N times the rate (see docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from shared.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Buckets by key, created full; the least recently used are forgotten past
    `max_buckets` (a forgotten bucket comes back full, so memory stays bounded)."""

    def __init__(self, rate: float, burst: int, *, max_buckets: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: int = 1) -> float:
        """Take `cost` tokens; answers 0.0 when granted, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def refund(self, key: str, cost: int = 1) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + cost)


class RateLimits:
    def __init__(self, per_key: TokenBuckets, per_kb: TokenBuckets) -> None:
        self.per_key = per_key
        self.per_kb = per_kb

    def charge_caller(self, owner: str) -> None:
        wait = self.per_key.take(owner)
        if wait:
            raise RateLimited(
                f"rate limit exceeded: {self.per_key.rate:g} requests/s with bursts of {self.per_key.burst} "
                "per API key; retry later", _retry_after(wait))

    def charge_kbs(self, tasks_per_kb: dict[str, int]) -> None:
        """All or nothing: either every kb's bucket pays for its tasks, or none does."""
        if not self.per_kb.enabled or not tasks_per_kb:
            return
        waits = {kb: self.per_kb.take(kb, n) for kb, n in tasks_per_kb.items()}
        refused = {kb: w for kb, w in waits.items() if w}
        if refused:
            for kb, n in tasks_per_kb.items():  # give back what the granted ones took
                if kb not in refused:
                    self.per_kb.refund(kb, n)
            kb, wait = max(refused.items(), key=lambda item: item[1])
            raise RateLimited(
                f"rate limit exceeded for kb_id {kb!r}: {self.per_kb.rate:g} tasks/s with bursts of "
                f"{self.per_kb.burst}; retry later", _retry_after(wait))


def _retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
