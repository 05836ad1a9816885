"""Samples every queue of the topology with passive declares (no management
plugin needed): `task_queue_size{queue}` and `task_queue_consumers{queue}`
every few seconds, and on demand for GET /api/v1/stats/queues."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import ChannelNotFoundEntity
from loguru import logger

from shared import metrics
from shared.runtime import stop_task
from shared.topology import Topology

INTERVAL_SECONDS = 5.0


@dataclass(frozen=True)
class QueueFigures:
    """What is known about one queue; None where the source cannot tell
    (AMQP gives ready messages and consumers; the management API gives the rest)."""

    ready: int | None = None
    unacked: int | None = None
    consumers: int | None = None
    publish_rate: float | None = None
    deliver_rate: float | None = None
    ack_rate: float | None = None
    policy: str | None = None


class QueueMonitor:
    def __init__(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        self._task: asyncio.Task[None] | None = None

    @property
    def topology(self) -> Topology:
        return self._topology

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-monitor")

    async def stop(self) -> None:
        if self._task:
            await stop_task(self._task, "the queue monitor")

    async def sample(self) -> dict[str, QueueFigures]:
        """Ready messages and consumers of every queue that exists (a missing
        one is left out); raises when the broker cannot answer."""
        figures = {}
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            for spec in self._topology.queues:
                try:
                    result = (await channel.declare_queue(spec.name, passive=True)).declaration_result
                except ChannelNotFoundEntity:
                    # The broker closes the channel on a missing queue: carry on with a new one.
                    channel = await self._connection.channel(publisher_confirms=False)
                    continue
                figures[spec.name] = QueueFigures(ready=result.message_count or 0,
                                                  consumers=result.consumer_count or 0)
                metrics.task_queue_size.labels(spec.name).set(result.message_count or 0)
                metrics.task_queue_consumers.labels(spec.name).set(result.consumer_count or 0)
            return figures
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # noqa: BLE001 - sampling is best effort
                logger.debug("queue sampling failed: {}", exc)
            await asyncio.sleep(INTERVAL_SECONDS)
