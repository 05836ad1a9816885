"""One attempt of one stage of one task: what its handler sees (`TaskContext`)
and how its progress reaches `tm.events`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from loguru import logger

from services.worker.cpu import CpuPool
from services.worker.estimates import DurationEstimator, estimate_completion
from shared.amqp.publisher import EventPublisher
from shared.errors import Unavailable
from shared.messages import TaskMessage, TaskProgress, TaskStarted, utcnow
from shared.task_files import TaskFiles

PROGRESS_MIN_INTERVAL_SECONDS = 0.5
T = TypeVar("T")


class AttemptContext:
    """Implements `shared.task_types.TaskContext` for the worker."""

    def __init__(
        self,
        task: TaskMessage,
        attempt: int,
        *,
        events: EventPublisher,
        estimator: DurationEstimator,
        worker_id: str,
        cpu: CpuPool,
        files: TaskFiles,
    ) -> None:
        self.task = task
        self.files = files
        self.parents: Mapping[str, Any] = task.context.get("parents") or {}
        self.task_id = task.task_id
        self.kb_id = task.kb_id
        self.task_type = task.task_type
        self.stage = task.stage
        self.attempt = attempt
        self.started_at: datetime = utcnow()
        self._started_monotonic = time.monotonic()
        self._events = events
        self._estimator = estimator
        self._worker_id = worker_id
        self._cpu = cpu
        self._announced = False
        self._stage_percent = 0.0
        self._last_sent_progress = -1
        self._last_sent_at = 0.0
        self._lock = asyncio.Lock()
        self._plan: dict[str, float] | None = None

    @property
    def elapsed_seconds(self) -> float:
        return time.monotonic() - self._started_monotonic

    def set_plan(self, expected_seconds: Mapping[str, float]) -> None:
        """How long each stage of this task should take (from observed stage rates):
        weights the stages in the overall progress and extends the completion
        estimate past the current stage. Without a plan every stage weighs the same."""
        plan = {stage: max(0.0, float(expected_seconds.get(stage, 0.0))) for stage in self.task.stages}
        self._plan = plan if sum(plan.values()) > 0 else None

    def overall_progress(self, stage_percent: float | None = None) -> int:
        """Progress of the whole task: earlier stages count as done."""
        percent = self._stage_percent if stage_percent is None else stage_percent
        stages = self.task.stages
        if self._plan is not None:
            done = sum(self._plan[s] for s in stages[: self.task.stage_index])
            overall = (done + percent / 100 * self._plan[self.stage]) / sum(self._plan.values()) * 100
        else:
            overall = (self.task.stage_index + percent / 100) / len(stages) * 100
        return min(99, int(overall))  # 100 only when the task completes

    def estimated_completion(self, *, stage_done: bool = False) -> datetime | None:
        now = utcnow()
        later = 0.0
        if self._plan is not None:
            later = sum(self._plan[s] for s in self.task.stages[self.task.stage_index + 1 :])
        if stage_done:
            return now + timedelta(seconds=later) if self._plan is not None else None
        # The plan knows this document's size; the estimator only this stage's recent attempts.
        typical = self._plan[self.stage] if self._plan is not None else self._estimator.typical(
            self.task_type, self.stage)
        this_stage = estimate_completion(self.started_at, now, self._stage_percent, typical)
        return None if this_stage is None else this_stage + timedelta(seconds=later)

    async def announce_started(self) -> None:
        """Publish `task.started` once (delayed, so short tasks send only their end)."""
        async with self._lock:
            if self._announced:
                return
            self._announced = True
            await self._send(
                TaskStarted(
                    task_id=self.task_id, run=self.task.run, task_type=self.task_type, kb_id=self.kb_id,
                    stage=self.stage, attempt=self.attempt, started_at=self.started_at,
                    progress=self.overall_progress(), estimated_completion=self.estimated_completion(),
                    worker_id=self._worker_id,
                )
            )

    async def progress(self, percent: float, message: str | None = None) -> None:
        percent = max(0.0, min(100.0, float(percent)))
        if percent <= self._stage_percent:
            return
        self._stage_percent = percent
        overall = self.overall_progress()
        now = time.monotonic()
        if overall == self._last_sent_progress or now - self._last_sent_at < PROGRESS_MIN_INTERVAL_SECONDS:
            return
        await self.announce_started()
        self._last_sent_progress, self._last_sent_at = overall, now
        await self._send(
            TaskProgress(
                task_id=self.task_id, run=self.task.run, task_type=self.task_type, kb_id=self.kb_id,
                stage=self.stage, attempt=self.attempt, progress=overall, message=message,
                estimated_completion=self.estimated_completion(),
            )
        )

    async def run_cpu(self, function: Callable[..., T], *args: Any) -> T:
        return await self._cpu.run(function, *args)

    async def _send(self, event: TaskStarted | TaskProgress) -> None:
        try:
            await self._events.event(event)
        except Unavailable as exc:
            # Progress is informative; the attempt's outcome is what must not be lost.
            logger.warning("could not publish {}: {}", event.kind, exc.message)
