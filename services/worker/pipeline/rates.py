"""How fast each pipeline stage has been, per format, so that progress weights
and `estimated_completion` come from observation, not constants.

Each completed document records, per stage, seconds per unit of work (file
bytes for `preprocess`, characters of text for the others) as an exponential
moving average in `pipeline_stage_rates`; it also records characters per file
byte, to size the later stages before the text is known. Any stage worker
reads the table (cached briefly) to plan the whole task.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import asyncpg

ANY = "*"  # rates over every format, for formats not seen yet
CHARS_PER_BYTE = "_chars_per_byte"
SMOOTHING = 0.3
CACHE_SECONDS = 30.0


class StageRates:
    def __init__(self, stages: tuple[str, ...]) -> None:
        self._stages = stages
        self._rates: dict[tuple[str, str], float] = {}
        self._loaded_at = -CACHE_SECONDS

    async def refresh(self, pool: asyncpg.Pool) -> None:
        if time.monotonic() - self._loaded_at < CACHE_SECONDS:
            return
        rows = await pool.fetch("SELECT stage, content_type, seconds_per_unit FROM pipeline_stage_rates")
        self._rates = {(r["stage"], r["content_type"]): r["seconds_per_unit"] for r in rows}
        self._loaded_at = time.monotonic()

    def _rate(self, stage: str, content_type: str) -> float | None:
        return self._rates.get((stage, content_type), self._rates.get((stage, ANY)))

    def expected_seconds(self, content_type: str, file_bytes: int, characters: int | None) -> dict[str, float] | None:
        """Seconds each stage should take for this document; None until every stage has been observed."""
        if characters is None:
            ratio = self._rate(CHARS_PER_BYTE, content_type)
            if ratio is None:
                return None
            characters = int(file_bytes * ratio)
        plan = {}
        for stage in self._stages:
            rate = self._rate(stage, content_type)
            if rate is None:
                return None
            plan[stage] = rate * (file_bytes if stage == self._stages[0] else characters)
        return plan

    async def record(self, pool: asyncpg.Pool, content_type: str, file_bytes: int, characters: int,
                     timings: Mapping[str, float]) -> None:
        samples: list[tuple[str, float]] = []
        for stage, seconds in timings.items():
            units = file_bytes if stage == self._stages[0] else characters
            if stage in self._stages and units > 0:
                samples.append((stage, seconds / units))
        if file_bytes > 0:
            samples.append((CHARS_PER_BYTE, characters / file_bytes))
        rows = [(stage, kind, rate) for stage, rate in samples for kind in (content_type, ANY)]
        await pool.executemany(
            """INSERT INTO pipeline_stage_rates AS r (stage, content_type, seconds_per_unit) VALUES ($1, $2, $3)
               ON CONFLICT (stage, content_type) DO UPDATE SET
                   seconds_per_unit = r.seconds_per_unit + $4 * (EXCLUDED.seconds_per_unit - r.seconds_per_unit),
                   samples = r.samples + 1, updated_at = now()""",
            [(*row, SMOOTHING) for row in rows],
        )
        self._loaded_at = -CACHE_SECONDS
