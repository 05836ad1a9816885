"""`GET /api/v1/kbs/{kb_id}/documents/{document_id}/chunks`: page through a
document's chunks in order (text, pages, section path, whether OCR read them),
the view a KB owner checks a parse with."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from services.api.http import json_response
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, SETTINGS
from services.api.routes.kbs import _DOCUMENT_PATH, _document_id, _find_document, _kb_id
from shared.errors import FieldError, InvalidRequest

routes = web.RouteTableDef()
_CURSOR = re.compile(r"[0-9]{1,9}")  # the last chunk_index of the previous page


class ChunkView(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_index: int
    chunk_id: str
    content: str
    char_start: int
    char_end: int
    pages: list[int]
    heading_path: list[str]
    ocr: bool = Field(description="The text was read by OCR from an image (see metadata.ocr_confidence).")
    metadata: dict[str, Any]
    embedding_model: str | None
    updated_at: datetime


class ChunkPage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    items: list[ChunkView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


def _chunks_query(ctx: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": ctx.settings.api.max_page_size, "default": 50},
        "cursor": {"type": "string", "pattern": f"^{_CURSOR.pattern}$"}}}


@routes.get("/api/v1/kbs/{kb_id}/documents/{document_id}/chunks")
@documented(Operation(summary="Page through a document's chunks", tag="knowledge bases", path=_DOCUMENT_PATH,
                      query=_chunks_query, errors=(422,),
                      responses={200: (ChunkPage, "Chunks in document order; pass next_cursor for the next page.")}))
async def list_chunks(request: web.Request) -> web.Response:
    kb_id, document_id = _kb_id(request), _document_id(request)
    params = request.rel_url.query
    max_page = request.app[SETTINGS].api.max_page_size
    limit = _int(params.get("limit", "50"))
    if limit is None or not 1 <= limit <= max_page:
        raise InvalidRequest("invalid query", [FieldError("limit", f"must be an integer from 1 to {max_page}")])
    cursor = params.get("cursor")
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise InvalidRequest("invalid query", [FieldError("cursor", "is not a cursor returned by this endpoint")])
    after = int(cursor) if cursor is not None else -1
    await _find_document(request, kb_id, document_id)  # 404 for an unknown (or not yet ready) document
    async with request.app[ENGINE].connect() as conn:
        rows = (await conn.execute(text(
            "SELECT chunk_index, CAST(chunk_id AS text) AS chunk_id, content, char_start, char_end, pages, "
            "heading_path, metadata, embedding_model, updated_at FROM kb_chunks "
            "WHERE kb_id = :kb AND document_id = :doc AND chunk_index > :after "
            "ORDER BY chunk_index LIMIT :limit"),
            {"kb": kb_id, "doc": document_id, "after": after, "limit": limit + 1})).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    items = [{**dict(r), "pages": list(r["pages"] or []), "heading_path": list(r["heading_path"] or []),
              "ocr": bool((r["metadata"] or {}).get("ocr"))} for r in page]
    return json_response({"items": items, "next_cursor": str(page[-1]["chunk_index"]) if more else None})


def _int(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None
