"""GET /api/v1/stats/queues: every queue of the topology, grouped the way an
operator reads them (stages, retry tiers, dead letters, the rest).

Figures come from the management API when RABBITMQ_MANAGEMENT_URL is set
(ready, unacked, consumers, rates, policy) and otherwise, or when it does not
answer, from passive declares (ready and consumers only; the answer says so).
"""

from __future__ import annotations

from typing import Any

from services.api.queue_monitor import QueueFigures, QueueMonitor
from services.api.rabbitmq_management import ManagementApi, ManagementApiError
from shared.messages import utcnow
from shared.topology import DEAD_QUEUE, RETRY_TIERS, stage_queue

# Every queue we own starts with "tm." (server-named exclusive queues do not).
OUR_QUEUES_PATTERN = r"^tm\."


class QueueStats:
    def __init__(self, monitor: QueueMonitor, management: ManagementApi | None) -> None:
        self._monitor = monitor
        self._management = management

    async def snapshot(self) -> dict[str, Any]:
        """Raises when neither source can answer (the broker is unreachable)."""
        notes: list[str] = []
        figures: dict[str, QueueFigures] | None = None
        source = "amqp"
        if self._management is not None:
            try:
                figures = await self._management.queues(OUR_QUEUES_PATTERN)
                source = "management"
            except ManagementApiError as exc:
                notes.append(f"management API: {exc}; figures from AMQP passive declares instead")
        else:
            notes.append("unacked counts and rates need RABBITMQ_MANAGEMENT_URL")
        if figures is None:
            figures = await self._monitor.sample()

        topology = self._monitor.topology
        missing = [q.name for q in topology.queues if q.name not in figures]
        if missing:
            notes.append(f"missing queues (not declared or deleted): {', '.join(missing)}")

        def view(name: str, **extra: Any) -> dict[str, Any]:
            return {"queue": name, **extra, **figures_view(figures.get(name)), "exists": name in figures}

        grouped = {stage_queue(s) for s in topology.stages} | {t.queue for t in RETRY_TIERS} | {DEAD_QUEUE}
        return {
            "source": source,
            "sampled_at": utcnow(),
            "stages": [
                view(stage_queue(stage), stage=stage, max_length=_argument(topology.queue(stage_queue(stage)).arguments,
                                                                            "x-max-length"))
                for stage in topology.stages
            ],
            "retry": [view(tier.queue, tier=tier.name, delay_seconds=tier.seconds) for tier in RETRY_TIERS],
            "dead_letter": view(DEAD_QUEUE),
            "other": [view(q.name) for q in topology.queues if q.name not in grouped],
            "notes": notes,
        }


def figures_view(figures: QueueFigures | None) -> dict[str, Any]:
    f = figures or QueueFigures()
    total = f.ready + f.unacked if f.ready is not None and f.unacked is not None else None
    return {
        "ready": f.ready,
        "unacked": f.unacked,
        "messages": total,
        "consumers": f.consumers,
        "publish_rate": f.publish_rate,
        "deliver_rate": f.deliver_rate,
        "ack_rate": f.ack_rate,
        "policy": f.policy,
    }


def _argument(arguments: tuple[tuple[str, Any], ...], key: str) -> Any:
    return dict(arguments).get(key)
