"""`POST /api/v1/uploads`: a file for `payload.file_ref`, so the KB service
needs no filesystem shared with the workers."""

from __future__ import annotations

import re

from aiohttp import BodyPartReader, ClientPayloadError, MultipartReader, web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from services.api import upload_intake
from services.api.auth import principal_of
from services.api.http import json_response
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, SETTINGS, UPLOAD_STORE
from services.api.schemas import UploadCreated
from shared.db.models import uploads
from shared.errors import FieldError, Forbidden, InvalidRequest, PayloadTooLarge, Unavailable
from shared.messages import utcnow
from shared.task_request import KB_ID_PATTERN
from shared.uploads import new_file_ref

routes = web.RouteTableDef()
_KB_ID = re.compile(KB_ID_PATTERN)
MULTIPART_OVERHEAD = 64 * 1024


class UploadForm(BaseModel):
    """The multipart form of `POST /api/v1/uploads`."""

    model_config = ConfigDict(extra="forbid")

    kb_id: str = Field(pattern=KB_ID_PATTERN, description="The knowledge base the file belongs to; only tasks "
                                                          "of this kb_id may use it.")
    file: bytes = Field(json_schema_extra={"format": "binary", "contentMediaType": "application/octet-stream"},
                        description="The file (at most MAX_FILE_BYTES).")


@routes.post("/api/v1/uploads")
@documented(Operation(
    summary="Upload a file for a task",
    description="Streams the file into the upload store and answers a `file_ref` to use as `payload.file_ref` "
                "for the same kb_id. The file is deleted UPLOAD_RETENTION_SECONDS after the last task using it "
                "ended, or UPLOAD_UNUSED_TTL_SECONDS after upload if no task uses it.",
    tag="uploads", body=UploadForm, body_type="multipart", errors=(503,),
    responses={201: (UploadCreated, "Stored.")},
))
async def create_upload(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    principal = principal_of(request)
    max_bytes = settings.files.max_file_bytes
    if request.content_length is not None and request.content_length > max_bytes + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the file exceeds the limit of {max_bytes} bytes (MAX_FILE_BYTES)")
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidRequest("send multipart/form-data with the parts kb_id and file",
                             [FieldError("body", "must be multipart/form-data")])

    store_root = app[UPLOAD_STORE].root
    kb_id: str | None = None
    stored: upload_intake.StoredFile | None = None
    try:
        reader = await request.multipart()
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in ("kb_id", "file"):
                raise InvalidRequest("unknown form field", [FieldError(str(getattr(part, "name", "")),
                                                                       "unknown field; send kb_id and file")])
            if part.name == "kb_id":
                kb_id = (await part.read(decode=True))[:200].decode(errors="replace").strip()
                _check_kb(kb_id, principal)
            elif stored is not None:
                raise InvalidRequest("one file per upload", [FieldError("file", "sent more than once")])
            else:
                stored = await upload_intake.receive(part, store_root, new_file_ref(), max_bytes=max_bytes)
        missing = [FieldError(name, "is required") for name, value in (("kb_id", kb_id), ("file", stored))
                   if value is None]
        if missing:
            raise InvalidRequest("kb_id and file are required", missing)
        assert stored is not None and kb_id is not None
        if stored.size == 0:
            raise InvalidRequest("the file is empty", [FieldError("file", "is empty")])
        created_at = utcnow()
        upload_intake.write_meta(stored, kb_id, created_at)
        try:
            async with app[ENGINE].begin() as conn:
                await conn.execute(uploads.insert().values(
                    file_ref=stored.file_ref, kb_id=kb_id, created_by=principal.owner, filename=stored.filename,
                    size_bytes=stored.size, sha256=stored.sha256, content_type=stored.content_type,
                    created_at=created_at,
                ))
        except (DBAPIError, InterfaceError, OperationalError, OSError) as exc:
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


async def _next_part(reader: MultipartReader) -> object:
    try:
        return await reader.next()
    except (ValueError, AssertionError, ClientPayloadError) as exc:
        raise InvalidRequest("the multipart body is malformed", [FieldError("body", str(exc)[:200])]) from None


def _check_kb(kb_id: str, principal: object) -> None:
    if not _KB_ID.match(kb_id):
        raise InvalidRequest("invalid kb_id", [FieldError("kb_id", f"must match {KB_ID_PATTERN}")])
    if not principal.may_use_kb(kb_id):  # type: ignore[attr-defined]
        detail = f"this API key may not use kb_id {kb_id!r}"
        raise Forbidden(detail, [FieldError("kb_id", detail)])
