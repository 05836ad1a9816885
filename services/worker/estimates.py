"""Completion estimates from what this worker has observed, never constants."""

from __future__ import annotations

from datetime import datetime, timedelta


class DurationEstimator:
    """Exponential moving average of attempt durations per (task_type, stage)."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self._averages: dict[tuple[str, str], float] = {}

    def observe(self, task_type: str, stage: str, seconds: float) -> None:
        key = (task_type, stage)
        previous = self._averages.get(key)
        self._averages[key] = seconds if previous is None else previous + self._smoothing * (seconds - previous)

    def typical(self, task_type: str, stage: str) -> float | None:
        return self._averages.get((task_type, stage))


def estimate_completion(
    started_at: datetime, now: datetime, progress: float, typical_seconds: float | None
) -> datetime | None:
    """Extrapolate from progress so far; before any progress, use the typical duration."""
    elapsed = (now - started_at).total_seconds()
    if progress >= 100:
        return now
    if progress > 0 and elapsed > 0:
        return now + timedelta(seconds=elapsed * (100 - progress) / progress)
    if typical_seconds is not None:
        return started_at + timedelta(seconds=typical_seconds)
    return None
