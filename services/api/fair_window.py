"""When admission sends a first stage's tasks through its fair window (decision 0161).

The window is engaged only under backlog, so an idle fleet keeps the fast path:
while a stage's queue holds at most `FAIR_WINDOW` ready messages (with the
tasks being added) and no task of this replica waits for the window, a plain
task is published at once and this costs one dictionary look-up. The depth is
sampled (a passive declare per stage) every quarter second while this replica
publishes, or the queue is not empty, or tasks wait, and not at all on an idle
fleet; whether tasks wait (this replica's or another's) is one EXISTS query. A burst smaller than the
window between two samples goes through unseen; a batch larger than the window
is gated whole. Replicas sample apart and may disagree near the threshold: a
few tasks then bypass the window, which bends the order a little and breaks
nothing. (Counting this replica's publishes since the last sample as backlog
was tried: at 400 tasks/s a fleet that keeps up looked backlogged.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from loguru import logger

from shared.concurrency_keys import fair_window_key
from shared.runtime import stop_task
from shared.topology import stage_queue

# How often the depth is sampled while there is traffic, backlog or waiters.
REFRESH_SECONDS = 0.25

_ANY_WAITING = "SELECT EXISTS (SELECT 1 FROM concurrency_waiting WHERE key = $1)"


class FairWindow:
    def __init__(self, connection: AbstractRobustConnection, pool: asyncpg.Pool, *, window: int) -> None:
        self.window = window
        self._connection = connection
        self._pool = pool
        self._ready: Counter[str] = Counter()  # stage -> ready messages at the last sample
        self._waiters: set[str] = set()  # stages with tasks waiting for their window
        self._publishing: set[str] = set()  # stages published to since the last sample
        self._refresher: asyncio.Task[None] | None = None

    def engaged(self, stage: str, adding: int = 1) -> bool:
        """Would `adding` more tasks of `stage` go through the window?"""
        return stage in self._waiters or self._ready[stage] + adding > self.window

    def engaged_for(self, stages: Iterable[str]) -> bool:
        """Does any of a batch's first stages (one entry per task) go through the window?"""
        counts = Counter(stages)
        return any(self.engaged(stage, n) for stage, n in counts.items())

    def published(self, stages: Iterable[str]) -> None:
        """Tasks went to these stages' queues (one entry per task)."""
        self._publishing.update(stages)
        self._refresh_soon()

    def waiting(self, stage: str) -> None:
        """A task of this stage now waits for its window."""
        self._waiters.add(stage)
        self._refresh_soon()

    async def stop(self) -> None:
        if self._refresher is not None:
            await stop_task(self._refresher, "the fair window's refresh")

    def _refresh_soon(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh(), name="fair-window-refresh")

    async def _refresh(self) -> None:
        """Sample until there is nothing to watch, then end."""
        while self._publishing or any(self._ready.values()) or self._waiters:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self._sample()
            except Exception as exc:  # noqa: BLE001 - best effort: the last sample stands
                logger.debug("fair window: sampling failed: {}", exc)

    async def _sample(self) -> None:
        stages = self._publishing | {stage for stage, n in self._ready.items() if n}
        self._publishing = set()
        if stages:
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                for stage in stages:
                    declared = await channel.declare_queue(stage_queue(stage), passive=True)
                    self._ready[stage] = declared.declaration_result.message_count or 0
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        # Also the stages this replica only publishes to: another replica's tasks may wait there.
        for stage in stages | self._waiters:
            if await self._pool.fetchval(_ANY_WAITING, fair_window_key(stage)):
                self._waiters.add(stage)
            else:
                self._waiters.discard(stage)
