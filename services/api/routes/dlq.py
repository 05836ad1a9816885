"""`/api/v1/dlq`: what is in the dead-letter queue, and putting it back to work."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented
from services.api.resources import DEAD_LETTERS
from services.api.schemas import DeadLetterItems, DeadLetterList, PurgeReport, ReplayReport
from shared.errors import FieldError, InvalidRequest

routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
_LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
# `{"task_ids": [...]}` or `{"all": true}`, never both (the OpenAPI body of replay and purge).
SELECTION_SCHEMA = {
    "oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["task_ids"],
         "properties": {"task_ids": {"type": "array", "items": {"type": "string", "pattern": "^[^\\u0000]*$"}},
                        "all": {"const": False}, "limit": _LIMIT_SCHEMA}},
        {"type": "object", "additionalProperties": False, "required": ["all"],
         "properties": {"all": {"const": True}, "task_ids": {"type": "null"}, "limit": _LIMIT_SCHEMA}},
    ],
}


def _selection_doc(_: Any) -> dict[str, Any]:
    return SELECTION_SCHEMA


def _list_query_doc(_: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"limit": {**_LIMIT_SCHEMA, "default": DEFAULT_LIMIT}}}


@routes.get("/api/v1/dlq")
@documented(Operation(summary="List dead letters", tag="dead letters", query=_list_query_doc, errors=(422,),
                      responses={200: (DeadLetterList, "Dead letters with their reasons.")}))
async def list_dead_letters(request: web.Request) -> web.Response:
    limit = _limit(request.rel_url.query.get("limit"), DEFAULT_LIMIT)
    dlq = request.app[DEAD_LETTERS]
    items = await dlq.peek(limit=limit)
    return json_response({"depth": await dlq.depth(), "items": [i.model_dump() for i in items]})


@routes.get("/api/v1/dlq/{task_id:[0-9A-Fa-f-]{36}}")
@documented(Operation(summary="Show the dead letters of one task", tag="dead letters",
                      responses={200: (DeadLetterItems, "Its dead letters.")}))
async def show_dead_letter(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    items = await request.app[DEAD_LETTERS].peek(limit=MAX_LIMIT, task_id=task_id)
    if not items:
        raise web.HTTPNotFound(text=f"no dead letter for task {task_id!r}")
    return json_response({"items": [i.model_dump() for i in items]})


@routes.post("/api/v1/dlq/replay")
@documented(Operation(summary="Replay dead letters", tag="dead letters", body=_selection_doc,
                      responses={200: (ReplayReport, "What was replayed and what was skipped, with why.")}))
async def replay_dead_letters(request: web.Request) -> web.Response:
    """`{"task_ids": [...]}` or `{"all": true, "limit": 1000}`; a replayed task
    starts a fresh attempt series from its first stage and is `queued` again."""
    task_ids, limit = _selection(await read_json(request))
    report = await request.app[DEAD_LETTERS].replay(task_ids, limit=limit)
    return json_response({"replayed": report.replayed, "skipped": report.skipped})


@routes.post("/api/v1/dlq/purge")
@documented(Operation(summary="Purge dead letters", tag="dead letters", body=_selection_doc,
                      responses={200: (PurgeReport, "How many were dropped.")}))
async def purge_dead_letters(request: web.Request) -> web.Response:
    """`{"task_ids": [...]}` or `{"all": true}`: drop dead letters for good."""
    task_ids, _ = _selection(await read_json(request))
    purged = await request.app[DEAD_LETTERS].purge(task_ids)
    return json_response({"purged": purged})


def _selection(body: Any) -> tuple[list[str] | None, int]:
    if not isinstance(body, dict):
        raise InvalidRequest("send {\"task_ids\": [...]} or {\"all\": true}", [FieldError("body", "must be an object")])
    unknown = set(body) - {"task_ids", "all", "limit"}
    if unknown:
        raise InvalidRequest("unknown fields", [FieldError(k, "unknown field") for k in sorted(unknown)])
    task_ids, everything = body.get("task_ids"), body.get("all", False)
    if (task_ids is None) == (everything is not True):
        raise InvalidRequest("choose either task_ids or all", [FieldError("task_ids", "give task_ids, or all: true")])
    if task_ids is not None and (not isinstance(task_ids, list)
                                 or not all(isinstance(t, str) and "\x00" not in t for t in task_ids)):
        raise InvalidRequest("task_ids must be a list of task ids",
                             [FieldError("task_ids", "must be a list of strings without NUL characters")])
    if "all" in body and not isinstance(everything, bool):
        raise InvalidRequest("all must be a boolean", [FieldError("all", "must be true or false")])
    limit = body.get("limit")
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)  # 249.0 is an integer in JSON
    if "limit" in body and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise InvalidRequest("invalid limit", [FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")])
    return task_ids, _limit(limit, MAX_LIMIT)


def _limit(raw: Any, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest("invalid limit", [FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")])
    return value
