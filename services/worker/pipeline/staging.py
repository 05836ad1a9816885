"""Intermediate data of one task run, passed between stages by reference.

`pipeline_documents` holds one row per (task_id, run); its blocks and chunks
hang off it (ON DELETE CASCADE), so dropping a run is one statement. Stages
rewrite their own output on a retry (delete, then insert), so a redelivered
message never doubles anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import orjson

from services.worker.documents.blocks import Block

BLOCK_COLUMNS = ("task_id", "run", "seq", "kind", "text", "page", "heading_path", "section_break", "meta")
CHUNK_COLUMNS = ("task_id", "run", "chunk_index", "content", "char_start", "char_end", "pages", "heading_path",
                 "meta", "search_text", "content_sha256")


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def open_run(conn: asyncpg.Connection, task_id: str, run: int, *, kb_id: str, document_id: str,
                   source: str) -> None:
    """(Re)start the run's staging from nothing."""
    async with conn.transaction():
        await conn.execute("DELETE FROM pipeline_documents WHERE task_id = $1 AND run = $2", task_id, run)
        await conn.execute(
            """INSERT INTO pipeline_documents (task_id, run, kb_id, document_id, source, content_type, file_bytes,
                                               sha256) VALUES ($1, $2, $3, $4, $5, '', 0, '')""",
            task_id, run, kb_id, document_id, source,
        )


async def copy_blocks(conn: asyncpg.Connection, task_id: str, run: int, first_seq: int,
                      blocks: Sequence[Block]) -> None:
    records = [
        (task_id, run, first_seq + i, b.kind, b.text, b.page, list(b.heading_path), b.section_break, _json(b.meta))
        for i, b in enumerate(blocks)
    ]
    await conn.copy_records_to_table("pipeline_blocks", records=records, columns=BLOCK_COLUMNS)


async def drop_blocks(conn: asyncpg.Connection | asyncpg.Pool, task_id: str, run: int, first_seq: int,
                      end_seq: int) -> None:
    """One shard's blocks (its sequence range), before it parses again or when it failed."""
    await conn.execute("DELETE FROM pipeline_blocks WHERE task_id = $1 AND run = $2 AND seq >= $3 AND seq < $4",
                       task_id, run, first_seq, end_seq)


async def finish_extraction(conn: asyncpg.Connection, task_id: str, run: int, summary: Any) -> None:
    await conn.execute(
        """UPDATE pipeline_documents SET content_type = $3, file_bytes = $4, sha256 = $5, title = $6, pages = $7,
               characters = $8, block_count = $9, metadata = $10::jsonb, warnings = $11::jsonb
           WHERE task_id = $1 AND run = $2""",
        task_id, run, summary.content_type, summary.file_bytes, summary.sha256, summary.title, summary.pages,
        summary.characters, summary.blocks, _json(summary.metadata), _json(summary.warnings),
    )


async def document(conn: asyncpg.Connection | asyncpg.Pool, task_id: str, run: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM pipeline_documents WHERE task_id = $1 AND run = $2", task_id, run)


async def iter_blocks(pool: asyncpg.Pool, task_id: str, run: int, batch: int = 1000) -> AsyncIterator[list[Block]]:
    last = -1
    while True:
        rows = await pool.fetch(
            """SELECT seq, kind, text, page, heading_path, section_break, meta FROM pipeline_blocks
               WHERE task_id = $1 AND run = $2 AND seq > $3 ORDER BY seq LIMIT $4""",
            task_id, run, last, batch,
        )
        if not rows:
            return
        last = rows[-1]["seq"]
        yield [
            Block(r["text"], r["kind"], r["page"], tuple(r["heading_path"]), r["section_break"],
                  orjson.loads(r["meta"]) if r["meta"] else None)
            for r in rows
        ]


async def reset_chunks(conn: asyncpg.Connection, task_id: str, run: int) -> None:
    await conn.execute("DELETE FROM pipeline_chunks WHERE task_id = $1 AND run = $2", task_id, run)


async def copy_chunks(conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]]) -> None:
    await conn.copy_records_to_table("pipeline_chunks", records=records, columns=CHUNK_COLUMNS)


async def set_chunk_count(conn: asyncpg.Connection, task_id: str, run: int, count: int) -> None:
    await conn.execute("UPDATE pipeline_documents SET chunk_count = $3 WHERE task_id = $1 AND run = $2",
                       task_id, run, count)


async def set_metadata(conn: asyncpg.Connection | asyncpg.Pool, task_id: str, run: int, **values: Any) -> None:
    await conn.execute(
        "UPDATE pipeline_documents SET metadata = metadata || $3::jsonb WHERE task_id = $1 AND run = $2",
        task_id, run, _json(values),
    )


async def drop_run(conn: asyncpg.Connection | asyncpg.Pool, task_id: str, run: int) -> None:
    await conn.execute("DELETE FROM pipeline_documents WHERE task_id = $1 AND run = $2", task_id, run)


async def drop_task(conn: asyncpg.Connection | asyncpg.Pool, task_id: str) -> int:
    """Every run of a task (it ended: completed, failed or cancelled)."""
    result = await conn.execute("DELETE FROM pipeline_documents WHERE task_id = $1", task_id)
    return int(result.split()[-1])


async def drop_older_than(conn: asyncpg.Connection | asyncpg.Pool, age: timedelta) -> int:
    result = await conn.execute("DELETE FROM pipeline_documents WHERE created_at < now() - $1::interval", age)
    return int(result.split()[-1])
