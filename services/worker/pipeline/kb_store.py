"""The knowledge-base store: what search reads (kb_documents, kb_chunks).

Every write to a document happens in one transaction holding that document's
advisory lock, and is ordered by task id (UUIDv7, so submission order): a
write from a task older than the one that last wrote the document is skipped
(`Superseded`), so a slow, older re-processing never overwrites a newer one
and never resurrects a deleted document. Readers see the old chunk set or
the new one, never a mix and never none (docs/decisions/0012).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson


@dataclass(frozen=True)
class Superseded:
    """A newer task already wrote this document; this write was skipped."""

    by_task_id: str


@dataclass(frozen=True)
class Replaced:
    chunk_count: int
    previous_chunk_count: int


@dataclass(frozen=True)
class Deleted:
    deleted_chunks: int
    existed: bool


_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
# Chunks written per statement: each insert also updates the HNSW graph (milliseconds
# per vector), so a large document reports progress between batches.
UPSERT_BATCH = 500
_CURRENT = """SELECT task_id, state, chunk_count FROM kb_documents
              WHERE kb_id = $1 AND document_id = $2 FOR UPDATE"""
# Chunk ids are deterministic: the same (kb, document, index) always has the same id.
_UPSERT_CHUNKS = """
INSERT INTO kb_chunks AS k (kb_id, document_id, chunk_index, chunk_id, content, char_start, char_end, pages,
                            heading_path, metadata, embedding, embedding_dim, embedding_model, keywords, task_id)
SELECT $3, $4, c.chunk_index,
       CAST(md5($3 || chr(31) || $4 || chr(31) || c.chunk_index) AS uuid),
       c.content, c.char_start, c.char_end, c.pages, c.heading_path,
       COALESCE(c.meta, '{}'::jsonb) || $5::jsonb,
       c.embedding, vector_dims(c.embedding), $6, to_tsvector('simple', c.search_text), $1
FROM pipeline_chunks c
WHERE c.task_id = $1 AND c.run = $2 AND c.chunk_index >= $7 AND c.chunk_index < $8
ON CONFLICT (kb_id, document_id, chunk_index) DO UPDATE SET
    content = EXCLUDED.content, char_start = EXCLUDED.char_start, char_end = EXCLUDED.char_end,
    pages = EXCLUDED.pages, heading_path = EXCLUDED.heading_path, metadata = EXCLUDED.metadata,
    embedding = EXCLUDED.embedding, embedding_dim = EXCLUDED.embedding_dim,
    embedding_model = EXCLUDED.embedding_model, keywords = EXCLUDED.keywords, task_id = EXCLUDED.task_id,
    updated_at = now()
"""
_UPSERT_DOCUMENT = """
INSERT INTO kb_documents AS d (kb_id, document_id, state, task_id, source, content_type, file_bytes, sha256, title,
                               pages, characters, chunk_count, embedding_model, embedding_dim, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb)
ON CONFLICT (kb_id, document_id) DO UPDATE SET
    state = EXCLUDED.state, task_id = EXCLUDED.task_id, source = EXCLUDED.source,
    content_type = EXCLUDED.content_type, file_bytes = EXCLUDED.file_bytes, sha256 = EXCLUDED.sha256,
    title = EXCLUDED.title, pages = EXCLUDED.pages, characters = EXCLUDED.characters,
    chunk_count = EXCLUDED.chunk_count, embedding_model = EXCLUDED.embedding_model,
    embedding_dim = EXCLUDED.embedding_dim, metadata = EXCLUDED.metadata, updated_at = now()
"""


def lock_key(kb_id: str, document_id: str) -> str:
    return f"{kb_id}\x1f{document_id}"


async def _newer_writer(conn: asyncpg.Connection, kb_id: str, document_id: str,
                        task_id: str) -> tuple[asyncpg.Record | None, Superseded | None]:
    await conn.execute(_LOCK, lock_key(kb_id, document_id))
    current = await conn.fetchrow(_CURRENT, kb_id, document_id)
    if current is not None and current["task_id"] > uuid.UUID(task_id):
        return current, Superseded(str(current["task_id"]))
    return current, None


async def replace_document(conn: asyncpg.Connection, *, task_id: str, run: int, staged: asyncpg.Record,
                           embedding_model: str, document_metadata: dict[str, Any], chunk_metadata: dict[str, Any],
                           on_progress: Callable[[float], Awaitable[None]] | None = None) -> Replaced | Superseded:
    """Swap the document's chunks for the staged ones, in one transaction."""
    kb_id, document_id = staged["kb_id"], staged["document_id"]
    async with conn.transaction():
        current, superseded = await _newer_writer(conn, kb_id, document_id, task_id)
        if superseded is not None:
            return superseded
        count = staged["chunk_count"]
        await conn.execute("DELETE FROM kb_chunks WHERE kb_id = $1 AND document_id = $2 AND chunk_index >= $3",
                           kb_id, document_id, count)
        shared_metadata = orjson.dumps(chunk_metadata).decode()
        for first in range(0, count, UPSERT_BATCH):
            await conn.execute(_UPSERT_CHUNKS, task_id, run, kb_id, document_id, shared_metadata, embedding_model,
                               first, first + UPSERT_BATCH)
            if on_progress is not None:
                await on_progress(95 * min(count, first + UPSERT_BATCH) / count)
        dimension = await conn.fetchval(
            "SELECT embedding_dim FROM kb_chunks WHERE kb_id = $1 AND document_id = $2 LIMIT 1", kb_id, document_id)
        await conn.execute(
            _UPSERT_DOCUMENT, kb_id, document_id, "ready", task_id, staged["source"], staged["content_type"],
            staged["file_bytes"], staged["sha256"], staged["title"], staged["pages"], staged["characters"], count,
            embedding_model, dimension, orjson.dumps(document_metadata).decode(),
        )
        previous = current["chunk_count"] if current is not None and current["state"] == "ready" else 0
        return Replaced(chunk_count=count, previous_chunk_count=previous)


async def delete_document(conn: asyncpg.Connection, *, task_id: str, kb_id: str, document_id: str) -> Deleted | Superseded:
    """Remove the chunks and leave a tombstone, so an older task cannot bring them back."""
    async with conn.transaction():
        current, superseded = await _newer_writer(conn, kb_id, document_id, task_id)
        if superseded is not None:
            return superseded
        result = await conn.execute("DELETE FROM kb_chunks WHERE kb_id = $1 AND document_id = $2", kb_id, document_id)
        await conn.execute(
            """INSERT INTO kb_documents (kb_id, document_id, state, task_id, chunk_count)
               VALUES ($1, $2, 'deleted', $3, 0)
               ON CONFLICT (kb_id, document_id) DO UPDATE SET state = 'deleted', task_id = EXCLUDED.task_id,
                   chunk_count = 0, updated_at = now()""",
            kb_id, document_id, task_id,
        )
        return Deleted(deleted_chunks=int(result.split()[-1]),
                       existed=current is not None and current["state"] == "ready")


async def document_row(conn: asyncpg.Connection | asyncpg.Pool, kb_id: str, document_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM kb_documents WHERE kb_id = $1 AND document_id = $2", kb_id, document_id)


async def ensure_vector_index(pool: asyncpg.Pool, dimension: int) -> bool:
    """The HNSW index for vectors of `dimension` (a partial expression index per
    dimension, since models differ). Answers True when it had to be built."""
    if not 1 <= dimension <= 2000:  # pgvector's HNSW limit
        return False
    name = f"ix_kb_chunks_hnsw_{dimension}"
    if await pool.fetchval("SELECT 1 FROM pg_indexes WHERE indexname = $1", name):
        return False
    async with pool.acquire() as conn:
        # Builders take turns; CONCURRENTLY keeps the table writable meanwhile.
        await conn.execute("SELECT pg_advisory_lock(hashtextextended('kb_chunks_hnsw', $1))", dimension)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_indexes WHERE indexname = $1", name):
                return False
            await conn.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON kb_chunks "
                f"USING hnsw ((embedding::vector({dimension})) vector_cosine_ops) WHERE embedding_dim = {dimension}"
            )
            return True
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended('kb_chunks_hnsw', $1))", dimension)
