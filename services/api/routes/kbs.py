"""`/api/v1/kbs/{kb_id}/...`: search a knowledge base, list its documents,
delete a document (as a task)."""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import text

from services.api import document_listing
from services.api.document_listing import (
    CURSOR_PATTERN,
    DOCUMENT_STATUSES,
    STATUS_FILTER_PATTERN,
    valid_cursor,
)
from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, LIMITS, QUERY_EMBEDDER, REGISTRY, SETTINGS
from services.api.routes.tasks import admit_one
from services.api.schemas import DocumentPage, DocumentView, SearchAnswer, TaskCreated
from services.api.search import QueryVector, knowledge_base_models, search_chunks
from services.api.views import task_created_view
from shared import metrics
from shared.embedding_rpc import MAX_QUERY_CHARS
from shared.errors import Conflict, FieldError, InvalidRequest, NotFound, Unavailable
from shared.task_request import KB_ID_PATTERN, validate_task_request
from shared.task_types.document_processing import DOCUMENT_ID_PATTERN

routes = web.RouteTableDef()

_KB_ID = re.compile(KB_ID_PATTERN)
_DOCUMENT_ID = re.compile(DOCUMENT_ID_PATTERN)
_KB_PATH = {"kb_id": {"type": "string", "pattern": KB_ID_PATTERN}}
_DOCUMENT_PATH = {**_KB_PATH, "document_id": {"type": "string", "pattern": DOCUMENT_ID_PATTERN}}


def _documents_query(ctx: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": ctx.settings.api.max_page_size, "default": 50},
        "cursor": {"type": "string", "pattern": CURSOR_PATTERN},
        "status": {"type": "string", "pattern": STATUS_FILTER_PATTERN,
                   "description": "Only these statuses, comma-separated: " + ", ".join(DOCUMENT_STATUSES)}}}


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(default=5, ge=1)
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"
    document_ids: list[str] | None = Field(default=None, min_length=1, max_length=100)


@routes.post("/api/v1/kbs/{kb_id}/search")
@documented(Operation(summary="Search a knowledge base", tag="knowledge bases", path=_KB_PATH, body=SearchRequest,
                      description="Hybrid (vector + keyword, fused by rank), vector or keyword search over the "
                                  "chunks of the knowledge base's documents.",
                      errors=(409, 503), responses={200: (SearchAnswer, "The best chunks, best first.")}))
async def search(request: web.Request) -> web.Response:
    started = time.perf_counter()
    app = request.app
    kb_id = _kb_id(request)
    body = _search_request(await read_json(request), app[SETTINGS].search.max_top_k)
    warnings: list[str] = []
    models = await knowledge_base_models(app[ENGINE], kb_id)
    if not models:
        warnings.append(f"knowledge base {kb_id!r} has no searchable documents yet")
    vector = None
    mode = body.mode
    if mode != "keyword" and models:
        try:
            reply = await app[QUERY_EMBEDDER].embed(body.query)
            assert reply.model is not None and reply.dimension is not None
            vector = QueryVector(reply.model, reply.dimension, "[" + ",".join(map(repr, reply.vectors[0])) + "]")
            if reply.model not in models:
                # Vectors of different models are not comparable: never rank one against the other.
                mismatch = (f"the documents of {kb_id!r} were embedded with {', '.join(models)} but the embedding "
                            f"workers now run {reply.model}; re-process the documents for vector search")
                if mode == "vector":
                    raise Conflict(mismatch + " (or search with mode 'keyword')")
                warnings.append(mismatch + "; keyword results only")
                vector, mode = None, "keyword"
        except Unavailable as exc:
            if mode == "vector":
                raise
            warnings.append(f"vector search unavailable ({exc.message}); keyword results only")
            mode = "keyword"
    rows = await search_chunks(
        app[ENGINE], kb_id=kb_id, query=body.query, vector=vector if mode != "keyword" else None,
        keywords=mode != "vector", top_k=body.top_k, document_ids=body.document_ids, ef_search=app[SETTINGS].search.hnsw_ef_search,
    ) if models else []
    metrics.search_requests_total.labels(mode).inc()
    return json_response({
        "kb_id": kb_id,
        "query": body.query,
        "mode": mode,
        "embedding_model": vector.model if vector is not None else None,
        "results": [_result(rank, row) for rank, row in enumerate(rows, start=1)],
        "warnings": warnings,
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
    })


@routes.get("/api/v1/kbs/{kb_id}/documents")
@documented(Operation(summary="List a knowledge base's documents", tag="knowledge bases", path=_KB_PATH,
                      description="Every document: queued, processing, ready, failed (with its error) and "
                                  "cancelled ones, with file, chunk count, model and timings of the newest run.",
                      query=_documents_query, errors=(422,),
                      responses={200: (DocumentPage, "Documents by id; pass next_cursor for the next page.")}))
async def list_documents(request: web.Request) -> web.Response:
    kb_id = _kb_id(request)
    params = request.rel_url.query
    max_page = request.app[SETTINGS].api.max_page_size
    try:
        limit = int(params.get("limit", 50))
    except ValueError:
        limit = -1
    if not 1 <= limit <= max_page:
        raise InvalidRequest("invalid query", [FieldError("limit", f"must be an integer from 1 to {max_page}")])
    after = params.get("cursor")
    if after is not None and not valid_cursor(after):
        raise InvalidRequest("invalid query", [FieldError("cursor", "is not a cursor returned by this endpoint")])
    statuses = document_listing.status_filter(params.get("status", ",".join(DOCUMENT_STATUSES)))
    if statuses is None:
        raise InvalidRequest("invalid query", [FieldError(
            "status", "one or more of " + ", ".join(DOCUMENT_STATUSES) + ", comma-separated")])
    items, next_cursor = await document_listing.list_documents(
        request.app[ENGINE], kb_id, statuses=statuses, after=after, limit=limit)
    return json_response(DocumentPage.model_validate({"items": items, "next_cursor": next_cursor}))


@routes.get("/api/v1/kbs/{kb_id}/documents/{document_id}")
@documented(Operation(summary="Show a document", tag="knowledge bases", path=_DOCUMENT_PATH,
                      responses={200: (DocumentView, "The document and what its chunks were made with.")}))
async def get_document(request: web.Request) -> web.Response:
    kb_id, document_id = _kb_id(request), _document_id(request)
    return json_response(await _find_document(request, kb_id, document_id))


@routes.delete("/api/v1/kbs/{kb_id}/documents/{document_id}")
@documented(Operation(summary="Delete a document (as a task)", tag="knowledge bases", path=_DOCUMENT_PATH,
                      headers={"Idempotency-Key": ("The same key returns the same deletion task.",
                                                   {"type": "string", "minLength": 1, "maxLength": 255})},
                      errors=(409, 503), responses={202: (TaskCreated, "The document_deletion task.")}))
async def delete_document(request: web.Request) -> web.Response:
    """Queues a `document_deletion` task (ordered with re-processing of the same document); 202."""
    app = request.app
    kb_id, document_id = _kb_id(request), _document_id(request)
    await _find_document(request, kb_id, document_id)
    valid = validate_task_request(
        {"task_type": "document_deletion", "kb_id": kb_id, "payload": {"document_id": document_id}},
        app[REGISTRY], app[LIMITS],
    )
    result = await admit_one(request, valid)
    task_id = str(result.task["id"])
    return json_response(task_created_view(result.task), status=202,
                         headers={"Location": f"/api/v1/tasks/{task_id}"})


_DOCUMENT_COLUMNS = ("document_id, source, title, content_type, file_bytes, pages, characters, chunk_count, "
                     "embedding_model, embedding_dim, metadata, CAST(task_id AS text) AS task_id, created_at, "
                     "updated_at")


async def _find_document(request: web.Request, kb_id: str, document_id: str) -> dict[str, Any]:
    async with request.app[ENGINE].connect() as conn:
        row = (await conn.execute(text(
            f"SELECT {_DOCUMENT_COLUMNS} FROM kb_documents WHERE kb_id = :kb AND document_id = :doc "
            "AND state = 'ready'"), {"kb": kb_id, "doc": document_id})).mappings().first()
    if row is None:
        raise NotFound(f"document {document_id!r} not found in knowledge base {kb_id!r}")
    return dict(row)


def _kb_id(request: web.Request) -> str:
    kb_id = request.match_info["kb_id"]
    if not _KB_ID.match(kb_id):
        raise InvalidRequest("invalid kb_id", [FieldError("kb_id", "letters, digits and _.:- only, 1-128 chars")])
    return kb_id


def _document_id(request: web.Request) -> str:
    document_id = request.match_info["document_id"]
    if not _DOCUMENT_ID.match(document_id):
        raise InvalidRequest("invalid document_id",
                             [FieldError("document_id", "letters, digits and _.:- only, 1-128 chars")])
    return document_id


def _search_request(data: Any, max_top_k: int) -> SearchRequest:
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", [FieldError("body", "expected an object")])
    try:
        body = SearchRequest.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "body"
            message = {"extra_forbidden": "unknown field", "missing": "is required"}.get(err["type"], err["msg"])
            errors.append(FieldError(field, message))
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors) from None
    if body.top_k > max_top_k:
        raise InvalidRequest(f"top_k: must be at most {max_top_k}", [FieldError("top_k", f"must be at most {max_top_k}")])
    return body


def _result(rank: int, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "rank": rank,
        "score": round(float(row["score"]), 6),
        "vector_similarity": None if row["vector_similarity"] is None else round(float(row["vector_similarity"]), 6),
        "keyword_score": None if row["keyword_score"] is None else round(float(row["keyword_score"]), 6),
        "document_id": row["document_id"],
        "chunk_index": row["chunk_index"],
        "chunk_id": row["chunk_id"],
        "content": row["content"],
        "pages": row["pages"],
        "heading_path": row["heading_path"],
        "char_start": row["char_start"],
        "char_end": row["char_end"],
        "metadata": row["metadata"],
    }
