"""Which worker processes are alive, from their `worker.heartbeat` events.

The api binds its own exclusive queue to `worker.#` on `tm.events`, so every
api replica sees every heartbeat. A worker is listed until it says it stopped
(its last heartbeat on a graceful stop) or until it misses
`MISSED_HEARTBEATS` of its own intervals (killed, hung, or cut off), measured
on this process's clock, so clock skew between hosts does not matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from loguru import logger

from shared import metrics
from shared.amqp.consumer import QueueConsumer
from shared.errors import PoisonMessage
from shared.messages import WorkerHeartbeat, parse_heartbeat, utcnow
from shared.topology import EVENTS_EXCHANGE, WORKER_EVENTS_PATTERN, declare_exclusive_queue

MISSED_HEARTBEATS = 3
# For heartbeats that do not say their interval (older workers).
ASSUMED_INTERVAL_SECONDS = 5.0


@dataclass(frozen=True)
class Sighting:
    heartbeat: WorkerHeartbeat
    received_at: datetime
    received_monotonic: float

    def expires_at(self) -> float:
        interval = self.heartbeat.interval_seconds or ASSUMED_INTERVAL_SECONDS
        return self.received_monotonic + MISSED_HEARTBEATS * interval


class WorkerRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workers: dict[str, Sighting] = {}
        self._stages_seen: set[str] = set()
        self._consumer = QueueConsumer(self._on_message, what="worker heartbeats", no_ack=True)

    async def listen(self, connection: AbstractRobustConnection) -> None:
        """Bind an exclusive queue to `worker.#` (restored with the connection)."""
        await self._consumer.start(
            connection, lambda ch: declare_exclusive_queue(ch, EVENTS_EXCHANGE, WORKER_EVENTS_PATTERN))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            heartbeat = parse_heartbeat(message.body)
        except PoisonMessage as exc:
            logger.warning("ignored a message on {}: {}", message.routing_key, exc)
            return
        self.observe(heartbeat)

    def observe(self, heartbeat: WorkerHeartbeat) -> None:
        if heartbeat.state == "stopped":
            if self._workers.pop(heartbeat.worker_id, None) is not None:
                logger.info("worker {} stopped", heartbeat.worker_id)
        else:
            if heartbeat.worker_id not in self._workers:
                logger.info("worker {} joined (stage {}, {} slots)", heartbeat.worker_id, heartbeat.stage,
                            heartbeat.pool_size)
            self._workers[heartbeat.worker_id] = Sighting(heartbeat, utcnow(), self._clock())
        self._stages_seen.add(heartbeat.stage)
        self.refresh_gauges()

    def live(self) -> list[Sighting]:
        """Workers heard from recently, by stage then id; forgets the others."""
        now = self._clock()
        for worker_id in [w for w, s in self._workers.items() if s.expires_at() <= now]:
            logger.warning("worker {} missed {} heartbeats; dropping it", worker_id, MISSED_HEARTBEATS)
            del self._workers[worker_id]
        return sorted(self._workers.values(), key=lambda s: (s.heartbeat.stage, s.heartbeat.worker_id))

    def refresh_gauges(self) -> None:
        """`worker_processes_live{stage}`, including zeros for stages whose workers all left."""
        counts = dict.fromkeys(self._stages_seen, 0)
        for sighting in self.live():
            counts[sighting.heartbeat.stage] += 1
        for stage, count in counts.items():
            metrics.worker_processes_live.labels(stage).set(count)


def worker_view(sighting: Sighting, now: datetime) -> dict[str, Any]:
    hb = sighting.heartbeat
    return {
        "worker_id": hb.worker_id,
        "host": hb.host,
        "pid": hb.pid,
        "stage": hb.stage,
        "state": hb.state,
        "pool_size": hb.pool_size,
        "active": hb.active,
        "idle": max(0, hb.pool_size - hb.active),
        "processed": hb.processed,
        "failed": hb.failed,
        "started_at": hb.started_at,
        "last_heartbeat": sighting.received_at,
        "last_heartbeat_age_seconds": round((now - sighting.received_at).total_seconds(), 3),
        "heartbeat_interval_seconds": hb.interval_seconds,
    }
