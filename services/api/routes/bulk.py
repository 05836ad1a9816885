"""`POST /api/v1/tasks/bulk/{cancel,retry}`: one action on every task the
filters of `GET /api/v1/tasks` select, with a dry run that only counts them.

The per-task work is the single-task code's (`task_cancel`, `task_retry`): a
bulk action is a selection, then that, task by task. Repeating a call is
harmless: the selection takes only tasks the action still applies to.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import Field, ValidationError

from services.api import task_repository as repo
from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, PUBLISHER, REGISTRY
from services.api.routes.tasks import TaskFilterFields, _scope
from services.api.schemas import BulkActionResult
from services.api.task_cancel import request_cancel
from services.api.task_retry import RETRYABLE, TaskRetry
from shared.errors import FieldError, InvalidRequest
from shared.status import TERMINAL, TaskStatus
from shared.task_request import field_errors

routes = web.RouteTableDef()

# One call touches at most this many tasks (the oldest first); `more` says to call again.
BULK_LIMIT = 10_000
# Ids listed in an answer: enough to follow a few, never a 10,000-item body.
IDS_SHOWN = 100
# Cancels published at once (each is two confirmed publishes).
CANCEL_CONCURRENCY = 50
FILTERS = ("status", "task_type", "kb_id", "workflow_id")

ELIGIBLE: dict[str, frozenset[str]] = {
    "cancel": frozenset(s.value for s in TaskStatus if s not in TERMINAL),
    "retry": frozenset(s.value for s in RETRYABLE),
}


class BulkActionRequest(TaskFilterFields):
    """The filters of `GET /api/v1/tasks` (no paging), and what to do."""

    all: bool = Field(default=False, description="Required (true) when no filter is given: every task you can see.")
    dry_run: bool = Field(default=False, description="Only count the tasks the action would touch.")


@routes.post("/api/v1/tasks/bulk/{action:cancel|retry}")
@documented(Operation(
    summary="Cancel or retry every task a filter selects",
    description=f"The filters of `GET /api/v1/tasks`, within the key's knowledge bases. `cancel` takes the tasks "
                f"not yet finished, `retry` the failed and cancelled ones, oldest first, at most {BULK_LIMIT:,} a "
                "call (`more` says to call again). `dry_run: true` answers the count only (the preview). Without "
                "any filter, `all: true` is required (422 otherwise).",
    path={"action": {"type": "string", "enum": ["cancel", "retry"]}},
    body=BulkActionRequest, errors=(422,), responses={200: (BulkActionResult, "What was (or would be) done.")},
))
async def bulk_action(request: web.Request) -> web.Response:
    action: Literal["cancel", "retry"] = "cancel" if request.match_info["action"] == "cancel" else "retry"
    try:
        body = BulkActionRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        raise InvalidRequest("invalid bulk action", field_errors(exc)) from None
    if not body.all and all(getattr(body, name) is None for name in FILTERS):
        raise InvalidRequest("no filter: a bulk action on every task needs `all: true`", [FieldError(
            "all", f"must be true when none of {', '.join(FILTERS)} is given")])

    scope = _scope(request)
    rows: list[repo.TaskRow] = []
    if body.kb_id is None or scope is None or body.kb_id in scope:  # another tenant's kb: nothing
        async with request.app[ENGINE].connect() as conn:
            rows = await repo.tasks_for_action(conn, body.task_filter(), eligible=ELIGIBLE[action],
                                               limit=BULK_LIMIT + 1, scope=scope)
    more, rows = len(rows) > BULK_LIMIT, rows[:BULK_LIMIT]
    done: list[str] = []
    skipped = 0
    if not body.dry_run:
        if action == "cancel":
            done = await _cancel(request, rows)
        else:
            app = request.app
            done, skipped = await TaskRetry(app[ENGINE], app[PUBLISHER], app[REGISTRY]).retry_many(
                [str(r["id"]) for r in rows], scope)
    return json_response(BulkActionResult(
        action=action, dry_run=body.dry_run, matched=len(rows), done=len(done), skipped=skipped,
        task_ids=done[:IDS_SHOWN], limit=BULK_LIMIT, more=more))


async def _cancel(request: web.Request, rows: list[repo.TaskRow]) -> list[str]:
    # A task that finished meanwhile is harmless: the dispatcher keeps the first terminal state.
    publisher = request.app[PUBLISHER]
    for at in range(0, len(rows), CANCEL_CONCURRENCY):
        await asyncio.gather(*(request_cancel(publisher, row) for row in rows[at:at + CANCEL_CONCURRENCY]))
    return [str(r["id"]) for r in rows]
