"""`POST /api/v1/kbs/{kb_id}/reembed`: run every stored document of a
knowledge base through the pipeline again, e.g. after the embedding workers
changed model. Each document is one `document_processing` task with the
payload of the run that wrote its chunks; search answers from a document's old
chunks until its new ones are stored.

Each task holds the unique key `reembed:<kb>:<document>` (per API key), so
calling again while a re-embed runs returns the same tasks instead of queueing
a second round (decision 0151).
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web
from pydantic import Field
from sqlalchemy import text

from services.api.auth import principal_of
from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented
from services.api.rate_limit import RATE_LIMITS
from services.api.resources import (
    ADMISSION,
    CHECKS,
    ENGINE,
    LIMITS,
    REGISTRY,
    SETTINGS,
)
from services.api.routes.document_reprocess import needs_password, rerun_payload
from services.api.routes.kbs import _KB_PATH, _kb_id
from services.api.schemas import _Body
from shared.errors import FieldError, InvalidRequest, TaskManagerError
from shared.task_request import ValidTask, validate_task_request

routes = web.RouteTableDef()


class ReembedTask(_Body):
    document_id: str
    task_id: str
    created: bool = Field(description="False: a re-embed of this document was already running (its task).")


class ReembedSkipped(_Body):
    document_id: str
    reason: str


class ReembedAnswer(_Body):
    kb_id: str
    submitted: int = Field(description="Tasks created by this call.")
    running: int = Field(description="Documents whose re-embed was already running (their tasks are listed).")
    tasks: list[ReembedTask]
    skipped: list[ReembedSkipped] = Field(description="Documents that cannot be re-run without the caller.")


def unique_key(kb_id: str, document_id: str) -> str:
    return f"reembed:{kb_id}:{document_id}"


@routes.post("/api/v1/kbs/{kb_id}/reembed")
@documented(Operation(
    summary="Re-embed every document of a knowledge base (as tasks)", tag="knowledge bases", path=_KB_PATH,
    description="One document_processing task per ready document, with the payload of the run that wrote it. "
                "While a re-embed of the kb runs, calling again returns its tasks (`created: false`). The body "
                "is empty (`{}`).",
    errors=(422, 429, 503), responses={202: (ReembedAnswer, "What was submitted.")}))
async def reembed_kb(request: web.Request) -> web.Response:
    app = request.app
    kb_id = _kb_id(request)
    if request.can_read_body:
        body = await read_json(request)
        if body not in ({}, None):
            raise InvalidRequest("the body must be empty or {}", [FieldError("body", "takes no fields")])
    async with app[ENGINE].connect() as conn:
        rows = (await conn.execute(text(
            "SELECT d.document_id, t.payload FROM kb_documents d LEFT JOIN tasks t ON t.id = d.task_id "
            "WHERE d.kb_id = :kb AND d.state = 'ready' ORDER BY d.document_id"), {"kb": kb_id})).all()
    skipped: list[ReembedSkipped] = []
    valid: list[tuple[str, ValidTask]] = []
    for document_id, previous in rows:
        if not isinstance(previous, dict):
            skipped.append(ReembedSkipped(document_id=document_id, reason="the task that wrote it is no longer "
                                          "kept (retention); submit the file again"))
        elif needs_password(previous):
            skipped.append(ReembedSkipped(document_id=document_id, reason="encrypted: re-process it with its "
                                          "password"))
        else:
            task = {"task_type": "document_processing", "kb_id": kb_id,
                    "payload": rerun_payload(previous, document_id), "unique_key": unique_key(kb_id, document_id)}
            try:
                valid.append((document_id, validate_task_request(task, app[REGISTRY], app[LIMITS])))
            except InvalidRequest as exc:
                skipped.append(ReembedSkipped(document_id=document_id, reason=exc.message))
    principal = principal_of(request)
    tasks: list[ReembedTask] = []
    step = app[SETTINGS].api.max_batch_size
    for start in range(0, len(valid), step):
        chunk = valid[start:start + step]
        problems = await app[CHECKS].check_many([v for _, v in chunk], principal)
        for (document_id, _), problem in zip(chunk, problems, strict=True):
            if problem is not None:  # e.g. the upload it came from expired
                skipped.append(ReembedSkipped(document_id=document_id, reason=problem.message))
        admit = [(d, v) for (d, v), p in zip(chunk, problems, strict=True) if p is None]
        app[RATE_LIMITS].charge_kbs(dict(Counter(kb_id for _ in admit)))
        results = await app[ADMISSION].admit([(v, None) for _, v in admit], via="rest", owner=principal.owner)
        for (document_id, _), result in zip(admit, results, strict=True):
            if isinstance(result, TaskManagerError):
                raise result
            tasks.append(ReembedTask(document_id=document_id, task_id=str(result.task["id"]),
                                     created=result.created))
    submitted = sum(1 for t in tasks if t.created)
    return json_response(ReembedAnswer(kb_id=kb_id, submitted=submitted, running=len(tasks) - submitted,
                                       tasks=tasks, skipped=skipped), status=202)
