"""The deliveries a stage worker is running right now: the pool gauges that
show them, and the drain at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger

from shared import metrics


class InFlight:
    def __init__(self, stage: str, pool_size: int) -> None:
        self.pool_size = pool_size
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active_gauge = metrics.worker_pool_active_count.labels(stage)
        self._idle_gauge = metrics.worker_pool_idle_count.labels(stage)
        self._update_gauges()

    def __len__(self) -> int:
        return len(self._tasks)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """The current task holds a delivery (one slot of the pool) while inside."""
        current = asyncio.current_task()
        assert current is not None
        self._tasks.add(current)
        self._update_gauges()
        try:
            yield
        finally:
            self._tasks.discard(current)
            self._update_gauges()

    async def drain(self, grace_seconds: float) -> None:
        """Let running attempts finish within the grace period, then cancel the
        rest (their handlers give their deliveries back)."""
        pending = set(self._tasks)
        if pending:
            logger.info("waiting up to {}s for {} task(s) in flight", grace_seconds, len(pending))
            _, pending = await asyncio.wait(pending, timeout=grace_seconds)
        for task in pending:
            task.cancel("worker shutting down")
        if pending:
            await asyncio.wait(pending, timeout=5)
            logger.warning("requeued {} unfinished task(s) at shutdown", len(pending))

    def _update_gauges(self) -> None:
        self._active_gauge.set(len(self))
        self._idle_gauge.set(max(0, self.pool_size - len(self)))
