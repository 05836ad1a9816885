"""Samples queue depths for `task_queue_size{queue}` with passive declares
(no management plugin needed)."""

from __future__ import annotations

import asyncio
import contextlib

from aio_pika.abc import AbstractRobustConnection
from loguru import logger

from shared import metrics
from shared.topology import Topology

INTERVAL_SECONDS = 5.0


class QueueMonitor:
    def __init__(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        self._task: asyncio.Task[None] | None = None
        self.depths: dict[str, dict[str, int]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sample(self) -> dict[str, dict[str, int]]:
        channel = await self._connection.channel()
        try:
            depths = {}
            for spec in self._topology.queues:
                queue = await channel.declare_queue(spec.name, passive=True)
                result = queue.declaration_result
                depths[spec.name] = {"ready": result.message_count or 0, "consumers": result.consumer_count or 0}
                metrics.task_queue_size.labels(spec.name).set(depths[spec.name]["ready"])
            self.depths = depths
            return depths
        finally:
            await channel.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # noqa: BLE001 - sampling is best effort
                logger.debug("queue sampling failed: {}", exc)
            await asyncio.sleep(INTERVAL_SECONDS)
