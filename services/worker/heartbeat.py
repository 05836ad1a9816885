"""`worker.heartbeat` events: who is alive, on which stage, how busy."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Literal

from loguru import logger

from services.worker.consumer import StageWorker
from shared.amqp.publisher import Publisher
from shared.errors import Unavailable
from shared.messages import WorkerHeartbeat, utcnow
from shared.runtime import bounded, stop_task

HeartbeatState = Literal["running", "draining", "stopped"]


class Heartbeat:
    def __init__(self, worker: StageWorker, publisher: Publisher, interval_seconds: float) -> None:
        self._worker = worker
        self._publisher = publisher
        self._interval = interval_seconds
        self._started_at = utcnow()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        """Stop beating and say goodbye, so listeners drop this worker at once
        instead of after a few missed intervals."""
        await stop_task(self._task, "the heartbeat")
        await bounded(self._publisher.heartbeat(self.snapshot(state="stopped")), "the last heartbeat", 2.0)

    def snapshot(self, state: HeartbeatState | None = None) -> WorkerHeartbeat:
        worker = self._worker
        return WorkerHeartbeat(
            worker_id=worker.worker_id, host=socket.gethostname(), pid=os.getpid(), stage=worker.stage,
            pool_size=worker.pool_size, active=worker.active, processed=worker.processed, failed=worker.failed,
            started_at=self._started_at, interval_seconds=self._interval,
            state=state or ("draining" if worker.stopping else "running"),
        )

    async def _run(self) -> None:
        while True:
            try:
                await self._publisher.heartbeat(self.snapshot())
            except Unavailable as exc:
                logger.debug("heartbeat not sent: {}", exc.message)
            await asyncio.sleep(self._interval)
