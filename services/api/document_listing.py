"""Every document of a knowledge base, whatever its state: one row per
document id, from the newest `document_processing` task naming it and the
document's row in `kb_documents` (what search reads).

A document's status is its newest run's: queued, processing, failed,
cancelled, or ready once a run's chunks are stored. A failed re-run leaves the
previous chunks searchable (`searchable`). A deletion tombstone hides every run
older than it. A run whose document id is not known yet (a `file_path` without
`document_id`, before `preprocess` named it, or failing before that) is listed
under its task, with `document_id` null.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

DocumentStatus = Literal["queued", "processing", "ready", "failed", "cancelled"]
DOCUMENT_STATUSES: tuple[str, ...] = get_args(DocumentStatus)

# A page ends after a sort key: the document id, or "~" + task id for a run not yet named.
_UNNAMED = "~"
CURSOR_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}|~[0-9a-f-]{36})$"
_CURSOR = re.compile(CURSOR_PATTERN)
_ONE_STATUS = "(" + "|".join(DOCUMENT_STATUSES) + ")"
STATUS_FILTER_PATTERN = f"^{_ONE_STATUS}(,{_ONE_STATUS})*$"
_STATUS_FILTER = re.compile(STATUS_FILTER_PATTERN)

# The newest run per document id (task ids are UUIDv7: the greatest is the newest).
_QUERY = """
WITH named AS (
    SELECT t.id, t.status, t.progress, t.stage, t.error, t.result, t.created_at, t.started_at, t.finished_at,
           t.payload->>'file_ref' AS file_ref, t.payload->>'file_path' AS file_path,
           COALESCE(t.payload->>'document_id', t.payload->>'file_ref', t.result->>'document_id',
                    pd.document_id) AS document_id
    FROM tasks t
    LEFT JOIN pipeline_documents pd ON pd.task_id = t.id AND pd.run = t.run
    WHERE t.kb_id = :kb AND t.task_type = 'document_processing'
), runs AS (
    SELECT DISTINCT ON (COALESCE(document_id, '~' || id::text)) *
    FROM named ORDER BY COALESCE(document_id, '~' || id::text), id DESC
), joined AS (
    SELECT r.id AS run_id, r.status AS run_status, r.progress, r.stage, r.error, r.result,
           r.created_at AS submitted_at, r.started_at, r.finished_at, r.file_ref, r.file_path,
           u.filename AS upload_name, u.content_type AS upload_type, u.size_bytes AS upload_bytes,
           d.state, d.task_id AS stored_task_id, d.source, d.title, d.content_type, d.file_bytes, d.pages,
           d.characters, d.chunk_count, d.embedding_model, d.embedding_dim, d.metadata,
           d.created_at, d.updated_at,
           COALESCE(d.document_id, r.document_id) AS document_id,
           COALESCE(d.document_id, r.document_id, '~' || r.id::text) AS sort_key,
           -- the run tells the status when it is newer than what kb_documents holds
           (r.id IS NOT NULL AND (d.task_id IS NULL OR r.id > d.task_id)) AS run_is_newer
    FROM runs r
    FULL OUTER JOIN (SELECT * FROM kb_documents WHERE kb_id = :kb) d ON d.document_id = r.document_id
    LEFT JOIN uploads u ON u.file_ref = r.file_ref
), statused AS (
    SELECT *, CASE WHEN NOT run_is_newer THEN 'ready'
                   WHEN run_status IN ('waiting', 'scheduled', 'queued') THEN 'queued'
                   WHEN run_status = 'completed' THEN 'ready'
                   ELSE run_status END AS doc_status
    FROM joined
    WHERE state = 'ready' OR run_is_newer
)
SELECT * FROM statused
WHERE sort_key COLLATE "C" > :after AND doc_status = ANY(:statuses)
ORDER BY sort_key COLLATE "C" LIMIT :limit
"""


def valid_cursor(cursor: str) -> bool:
    return bool(_CURSOR.match(cursor))


def status_filter(value: str) -> list[str] | None:
    """The statuses of a `status=ready,failed` filter; None when it is not one."""
    return value.split(",") if _STATUS_FILTER.match(value) else None


async def list_documents(engine: AsyncEngine, kb_id: str, *, statuses: Sequence[str], after: str | None,
                         limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """One page of documents in sort-key order, and the cursor of the next page (None: last page)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(_QUERY), {
            "kb": kb_id, "after": after or "", "statuses": list(statuses), "limit": limit + 1,
        })).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    return [_item(row) for row in page], (page[-1]["sort_key"] if more else None)


def _item(row: Any) -> dict[str, Any]:
    newer = row["run_is_newer"]
    ready = row["state"] == "ready"
    result = row["result"] if isinstance(row["result"], dict) else {}
    error = row["error"] if newer and isinstance(row["error"], dict) else None
    stored = {k: row[k] for k in ("title", "pages", "characters", "embedding_model", "embedding_dim")} if ready \
        else dict.fromkeys(("title", "pages", "characters", "embedding_model", "embedding_dim"))
    # The file: what the newest run names, else what the stored document came from.
    source = (row["upload_name"] or row["file_path"] or row["file_ref"]) if newer else None
    return {
        "document_id": row["document_id"],
        "status": row["doc_status"],
        "searchable": ready and (row["chunk_count"] or 0) > 0,
        "error": None if error is None else {"code": str(error.get("type", "error")),
                                              "message": str(error.get("message", "")),
                                              "stage": error.get("stage")},
        "source": source or row["source"],
        "content_type": (row["upload_type"] if newer else None) or row["content_type"],
        "file_bytes": (row["upload_bytes"] if newer else None) or row["file_bytes"],
        **stored,
        "chunk_count": row["chunk_count"] if ready else 0,
        "metadata": row["metadata"] if ready else {},
        "task_id": str(row["run_id"]) if row["run_id"] is not None else str(row["stored_task_id"]),
        "progress": row["progress"],
        "stage": row["stage"] if row["doc_status"] in ("queued", "processing") else None,
        "timings": {
            "submitted_at": row["submitted_at"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "stage_seconds": result.get("durations") if row["run_status"] == "completed" else None,
        },
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
