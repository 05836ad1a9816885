"""Page-range shards of one pipeline stage (docs/decisions/0170).

A stage that shards answers `StageOutput(fan_out=...)`: one message per page
range, each taken by any free worker of the stage. Each shard records that it
finished in its run's staging row; that row's lock orders the shards, so
exactly one of them sees the last count and moves the task on.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

# A chunk belongs to the shard holding its first page; a chunk without pages to the first shard.
ALL_PAGES = (-1, 2**31 - 1)

_MARK_DONE = """
UPDATE pipeline_documents
SET metadata = jsonb_set(metadata, ARRAY[$3::text],
                         COALESCE(metadata->$3, '{}'::jsonb) || jsonb_build_object($4::text, $5::jsonb))
WHERE task_id = $1 AND run = $2
RETURNING metadata->$3 AS done
"""


def page_ranges(pages: int | None, shard_pages: int) -> list[tuple[int, int]]:
    """The ranges to shard `pages` into; none when the document is not longer than a shard."""
    if not pages or shard_pages <= 0 or pages <= shard_pages:
        return []
    return [(first, min(first + shard_pages - 1, pages)) for first in range(1, pages + 1, shard_pages)]


def shard_contexts(ranges: list[tuple[int, int]]) -> tuple[dict[str, Any], ...]:
    return tuple({"shard": {"index": i, "count": len(ranges), "first_page": a, "last_page": b}}
                 for i, (a, b) in enumerate(ranges))


def block_seqs(shard: dict[str, Any]) -> tuple[int, int]:
    """The block sequence numbers a preprocess shard writes, in page order across shards."""
    span = (2**31 - 1) // int(shard["count"])
    return int(shard["index"]) * span, (int(shard["index"]) + 1) * span


def chunk_pages(shard: dict[str, Any] | None) -> tuple[int, int]:
    """The first-page bounds of the chunks a shard owns (the first and last shards take the edges)."""
    if shard is None:
        return ALL_PAGES
    low = ALL_PAGES[0] if shard["index"] == 0 else int(shard["first_page"])
    high = ALL_PAGES[1] if shard["index"] == shard["count"] - 1 else int(shard["last_page"])
    return low, high


async def mark_done(conn: asyncpg.Connection | asyncpg.Pool, task_id: str, run: int, stage: str,
                    shard: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Record `shard` as finished (a repeat overwrites itself); answers every finished shard's stats."""
    done = await conn.fetchval(_MARK_DONE, task_id, run, f"{stage}_shards", str(shard["index"]),
                               orjson.dumps(stats).decode())
    return orjson.loads(done) if isinstance(done, str | bytes) else dict(done or {})
