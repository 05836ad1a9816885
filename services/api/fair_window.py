"""When admission sends a first stage's tasks through its fair window (decision 0161).

The window is engaged only under backlog, so an idle fleet keeps the fast path:
while a stage's queue holds fewer than `FAIR_WINDOW` ready messages and no task
of this replica waits for the window, a plain task is published at once and
this costs one dictionary look-up. The backlog is an estimate kept in memory:
the stage queue's last sampled depth plus what this replica published since.
A refresh loop corrects it (a passive declare per stage, one EXISTS query for a
window with waiters) only while there is something to correct; an idle fleet
runs none. Replicas estimate apart and may disagree near the threshold: a few
tasks then bypass the window, which bends the order a little and breaks nothing.
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

# How often the estimate is corrected while a stage has backlog or waiters.
REFRESH_SECONDS = 1.0

_ANY_WAITING = "SELECT EXISTS (SELECT 1 FROM concurrency_waiting WHERE key = $1)"


class FairWindow:
    def __init__(self, connection: AbstractRobustConnection, pool: asyncpg.Pool, *, window: int) -> None:
        self.window = window
        self._connection = connection
        self._pool = pool
        self._backlog: Counter[str] = Counter()  # stage -> estimated ready messages
        self._waiters: set[str] = set()  # stages with tasks waiting for their window
        self._refresher: asyncio.Task[None] | None = None

    def engaged(self, stage: str, adding: int = 1) -> bool:
        """Would `adding` more tasks of `stage` go through the window?"""
        return stage in self._waiters or self._backlog[stage] + adding > self.window

    def engaged_for(self, stages: Iterable[str]) -> bool:
        """Does any of a batch's first stages (one entry per task) go through the window?"""
        counts = Counter(stages)
        return any(self.engaged(stage, n) for stage, n in counts.items())

    def published(self, stages: Iterable[str]) -> None:
        """Tasks went to these stages' queues (one entry per task)."""
        self._backlog.update(stages)
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
        """Correct the estimate until nothing is left to correct, then end."""
        while any(self._backlog.values()) or self._waiters:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self._sample()
            except Exception as exc:  # noqa: BLE001 - best effort: the estimate stays as it was
                logger.debug("fair window: sampling failed: {}", exc)

    async def _sample(self) -> None:
        stages = [stage for stage, n in self._backlog.items() if n]
        if stages:
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                for stage in stages:
                    before = self._backlog[stage]
                    declared = await channel.declare_queue(stage_queue(stage), passive=True)
                    # Publishes made while the broker answered are not in its count: keep them.
                    self._backlog[stage] = (declared.declaration_result.message_count or 0) + (
                        self._backlog[stage] - before)
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        for stage in list(self._waiters):
            if not await self._pool.fetchval(_ANY_WAITING, fair_window_key(stage)):
                self._waiters.discard(stage)
