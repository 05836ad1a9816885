"""`POST /api/v1/kbs/{kb_id}/documents/{document_id}/reprocess`: run a ready
document through the pipeline again with new parameters (chunk size, OCR
languages, ...). The new task starts from the payload of the task that wrote
the current chunks; the body's fields replace its own. Its chunks replace the
old ones when it completes, so search answers from the old chunks until then."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, LIMITS, REGISTRY
from services.api.routes.kbs import _DOCUMENT_PATH, _document_id, _find_document, _kb_id
from services.api.routes.tasks import admit_one
from services.api.schemas import TaskCreated
from services.api.views import task_created_view
from shared.errors import Conflict, FieldError, InvalidRequest
from shared.task_request import validate_task_request

routes = web.RouteTableDef()
_MASKED = "**********"  # how the task row stores a password (never kept)
_KEPT = ("file_path", "file_ref", "chunk_size", "chunk_overlap", "title", "metadata", "ocr_languages")


class ReprocessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="document_processing payload fields that replace the previous run's (chunk_size, "
        "chunk_overlap, ocr_languages, title, metadata, password). The file and document id stay.",
    )


def rerun_payload(previous: dict[str, Any], document_id: str) -> dict[str, Any]:
    """The payload of a new run of the document: the previous run's file and parameters
    (a masked password is dropped: it was never stored)."""
    kept = {k: previous[k] for k in _KEPT if previous.get(k) is not None}
    return {**kept, "document_id": document_id}


def needs_password(previous: dict[str, Any]) -> bool:
    return previous.get("password") == _MASKED


@routes.post("/api/v1/kbs/{kb_id}/documents/{document_id}/reprocess")
@documented(Operation(summary="Re-process a document with new parameters", tag="knowledge bases",
                      path=_DOCUMENT_PATH, body=ReprocessRequest, errors=(409, 422, 503),
                      responses={202: (TaskCreated, "The document_processing task.")}))
async def reprocess_document(request: web.Request) -> web.Response:
    app = request.app
    kb_id, document_id = _kb_id(request), _document_id(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", [FieldError("body", "expected an object")])
    unknown = set(body) - {"payload"}
    if unknown:
        raise InvalidRequest("unknown field", [FieldError(min(unknown), "unknown field")])
    overrides = body.get("payload", {})
    if not isinstance(overrides, dict):
        raise InvalidRequest("invalid payload", [FieldError("payload", "expected an object")])
    for fixed in ("file_path", "file_ref", "document_id"):
        if fixed in overrides:
            raise InvalidRequest("invalid payload", [FieldError(
                f"payload.{fixed}", "cannot change on re-processing; submit a new document instead")])
    document = await _find_document(request, kb_id, document_id)
    async with app[ENGINE].connect() as conn:
        previous = (await conn.execute(text("SELECT payload FROM tasks WHERE id = CAST(:id AS uuid)"),
                                       {"id": document["task_id"]})).scalar()
    if not isinstance(previous, dict):
        raise Conflict(f"the task that wrote document {document_id!r} is no longer kept; submit the file again")
    if needs_password(previous) and "password" not in overrides:
        raise InvalidRequest("the document is encrypted", [FieldError(
            "payload.password", "is required again: passwords are never stored")])
    payload = rerun_payload(previous, document_id)
    payload.update({**overrides, "document_id": document_id})
    task: dict[str, Any] = {"task_type": "document_processing", "kb_id": kb_id, "payload": payload}
    valid = validate_task_request(task, app[REGISTRY], app[LIMITS])
    result = await admit_one(request, valid)
    task_id = str(result.task["id"])
    return json_response(task_created_view(result.task), status=202, headers={"Location": f"/api/v1/tasks/{task_id}"})
