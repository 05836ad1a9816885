"""`POST /api/v1/uploads`: a file for `payload.file_ref`, so the KB service
needs no filesystem shared with the workers."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from aiohttp import BodyPartReader, ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.api import upload_intake
from services.api.auth import principal_of
from services.api.http import json_response
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, SETTINGS, UPLOAD_QUOTA, UPLOAD_STORE
from services.api.schemas import UploadCreated
from shared.db.errors import DB_ERRORS
from shared.db.models import uploads
from shared.errors import FieldError, Forbidden, InvalidRequest, PayloadTooLarge, Unavailable
from shared.messages import utcnow
from shared.security.api_keys import Principal
from shared.task_request import KB_ID_PATTERN, field_errors
from shared.uploads import new_file_ref

routes = web.RouteTableDef()
T = TypeVar("T")
MULTIPART_OVERHEAD = 64 * 1024


class UploadQuery(BaseModel):
    """The query of `POST /api/v1/uploads`: known before a byte of the file is read,
    so a key that may not use the kb is refused before anything is stored."""

    model_config = ConfigDict(extra="forbid")

    kb_id: str = Field(pattern=KB_ID_PATTERN, description="The knowledge base the file belongs to; only tasks "
                                                          "of this kb_id may use it.")


class UploadForm(BaseModel):
    """The multipart body of `POST /api/v1/uploads`: one part, `file`."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(min_length=1, json_schema_extra={"contentMediaType": "application/octet-stream"},
                      description="The file, not empty, at most MAX_FILE_BYTES.")


@routes.post("/api/v1/uploads")
@documented(Operation(
    summary="Upload a file for a task",
    description="Streams the file into the upload store and answers a `file_ref` to use as `payload.file_ref` "
                "for the same kb_id. The file is deleted UPLOAD_RETENTION_SECONDS after the last task using it "
                "ended, or UPLOAD_UNUSED_TTL_SECONDS after upload if no task uses it.",
    tag="uploads", query=UploadQuery, body=UploadForm, body_type="multipart", errors=(413, 503, 507),
    responses={201: (UploadCreated, "Stored.")},
))
async def create_upload(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    principal = principal_of(request)
    kb_id = _kb_id(request, principal)
    max_bytes = settings.files.max_file_bytes
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the file exceeds the limit of {max_bytes} bytes (MAX_FILE_BYTES)")
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidRequest("send multipart/form-data with one part named file",
                             [FieldError("body", "must be multipart/form-data")])

    store_root = app[UPLOAD_STORE].root
    async with app[UPLOAD_QUOTA].reserve(principal.owner, request.content_length, max_bytes) as allowed:
        return await _store(request, kb_id, principal, store_root, allowed)


async def _store(request: web.Request, kb_id: str, principal: Principal, store_root: Path,
                 allowed: int) -> web.Response:
    app = request.app
    quota = app[UPLOAD_QUOTA]
    too_large = quota.quota_message(allowed) if allowed < app[SETTINGS].files.max_file_bytes else None
    stored: upload_intake.StoredFile | None = None
    try:
        reader = await _malformed_as_422(request.multipart())
        while (part := await _malformed_as_422(reader.next())) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "file":
                raise InvalidRequest("unknown form field", [FieldError(str(getattr(part, "name", "")),
                                                                       "unknown field; send one part named file")])
            if stored is not None:
                raise InvalidRequest("one file per upload", [FieldError("file", "sent more than once")])
            stored = await _malformed_as_422(
                upload_intake.receive(part, store_root, new_file_ref(), max_bytes=allowed, too_large=too_large,
                                      stall_seconds=app[SETTINGS].api.body_timeout_seconds))
        if stored is None:
            raise InvalidRequest("the file is missing", [FieldError("file", "is required")])
        if stored.size == 0:
            raise InvalidRequest("the file is empty", [FieldError("file", "is empty")])
        quota.check_free_space()  # sent without a Content-Length, it may have crossed the floor
        created_at = utcnow()
        upload_intake.write_meta(stored, kb_id, created_at)
        try:
            async with app[ENGINE].begin() as conn:
                await conn.execute(uploads.insert().values(
                    file_ref=stored.file_ref, kb_id=kb_id, created_by=principal.owner, filename=stored.filename,
                    size_bytes=stored.size, sha256=stored.sha256, content_type=stored.content_type,
                    created_at=created_at,
                ))
        except DB_ERRORS as exc:
            logger.warning("upload not recorded: database unavailable ({})", type(exc).__name__)
            raise Unavailable("the task database is unavailable; retry the upload shortly") from None
        upload_intake.publish(stored, store_root)
    except BaseException:
        if stored is not None:
            await upload_intake.discard(stored.directory)
        raise
    logger.info("stored upload {} for kb {} ({} bytes, {})", stored.file_ref, kb_id, stored.size, stored.content_type)
    return json_response(UploadCreated(
        file_ref=stored.file_ref, kb_id=kb_id, filename=stored.filename, size=stored.size, sha256=stored.sha256,
        content_type=stored.content_type, created_at=created_at,
    ), 201)


def _kb_id(request: web.Request, principal: Principal) -> str:
    try:
        query = UploadQuery.model_validate(dict(request.rel_url.query))
    except ValidationError as exc:
        raise InvalidRequest("invalid query: ?kb_id=<knowledge base> is required", field_errors(exc)) from None
    if not principal.may_use_kb(query.kb_id):
        detail = f"this API key may not use kb_id {query.kb_id!r}"
        raise Forbidden(detail, [FieldError("kb_id", detail)])
    return query.kb_id


async def _malformed_as_422(step: Awaitable[T]) -> T:
    """aiohttp's multipart parser raises several unrelated types on bad input."""
    try:
        return await step
    except (ValueError, AssertionError, LookupError, ClientPayloadError, HttpProcessingError) as exc:
        raise InvalidRequest("the multipart body is malformed",
                             [FieldError("body", f"{type(exc).__name__}: {exc}"[:200])]) from None
