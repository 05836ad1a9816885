"""Task status and priority: the small vocabularies every process agrees on."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    WAITING = "waiting"  # unfinished parents (depends_on): a row, not a message
    SCHEDULED = "scheduled"  # delayed: waits in PostgreSQL until its run_at (decision 0090)
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        """Transitions only go up in rank; terminal states share the top rank,
        so the first terminal state to arrive wins."""
        return _RANK[self]

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


_RANK = {
    TaskStatus.WAITING: -1,
    TaskStatus.SCHEDULED: -1,
    TaskStatus.QUEUED: 0,
    TaskStatus.PROCESSING: 1,
    TaskStatus.COMPLETED: 2,
    TaskStatus.FAILED: 2,
    TaskStatus.CANCELLED: 2,
}
TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def amqp_priority(self) -> int:
        """AMQP message priority on stage queues declared with x-max-priority=10."""
        return _AMQP_PRIORITY[self]


_AMQP_PRIORITY = {Priority.HIGH: 9, Priority.NORMAL: 5, Priority.LOW: 1}
MAX_AMQP_PRIORITY = 10
