"""`/api/v1/workflows`: submit a set of dependent tasks at once, read its
aggregate state, cancel what is unfinished (docs/decisions/0101)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from typing import Any

from aiohttp import web

from services.api.auth import principal_of
from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented, task_union_schema
from services.api.rate_limit import RATE_LIMITS
from services.api.resources import CHECKS, ENGINE, LIMITS, PUBLISHER, REGISTRY
from services.api.workflow_admission import admit_workflow
from services.api.workflow_request import (
    MAX_WORKFLOW_TASKS,
    WorkflowPlan,
    WorkflowTask,
    validate_workflow,
)
from services.api.workflow_views import (
    WorkflowCreated,
    WorkflowView,
    created_view,
    read_workflow,
    workflow_view,
)
from shared.errors import Conflict, FieldError, Forbidden, InvalidRequest, NotFound
from shared.ids import is_task_id
from shared.messages import CancelTask, TaskCancelled, utcnow
from shared.status import TaskStatus

routes = web.RouteTableDef()

WORKFLOW_ID_SEGMENT = "[0-9A-Fa-f-]{32,36}"


def _body_doc(ctx: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "minItems": 1, "maxItems": MAX_WORKFLOW_TASKS,
                      "items": task_union_schema(ctx, schemas, WorkflowTask)},
            "callback_url": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 2083,
                             "description": "POSTed once, when every task of the workflow ended."},
        },
    }


@routes.post("/api/v1/workflows")
@documented(Operation(
    summary="Submit a workflow", tag="workflows",
    description="Tasks that name each other by `ref` in `depends_on`, admitted all or nothing. A cycle, a "
                "dangling or duplicate ref is a 422 naming it.",
    body=_body_doc, errors=(503,), responses={201: (WorkflowCreated, "Every task created.")},
))
async def submit_workflow(request: web.Request) -> web.Response:
    app = request.app
    principal = principal_of(request)
    plan = validate_workflow(await read_json(request), app[REGISTRY], app[LIMITS])
    await _check(request, plan)
    app[RATE_LIMITS].charge_kbs(dict(Counter(v.request.kb_id for v in plan.tasks if v.request.kb_id)))
    admitted = await admit_workflow(app[ENGINE], app[PUBLISHER], plan, owner=principal.owner)
    rows = [{"ref": ref, "task_id": admitted.task_ids[ref], "task_type": v.task_type.name,
             "status": admitted.statuses[ref], "progress": 0}
            for v in plan.tasks for ref in [WorkflowPlan.ref_of(v)]]
    return json_response(created_view(admitted.workflow_id, utcnow(), rows), status=201,
                         headers={"Location": f"/api/v1/workflows/{admitted.workflow_id}"})


@routes.get(f"/api/v1/workflows/{{workflow_id:{WORKFLOW_ID_SEGMENT}}}")
@documented(Operation(summary="Read a workflow", tag="workflows",
                      responses={200: (WorkflowView, "Its aggregate state and each task's.")}))
async def get_workflow(request: web.Request) -> web.Response:
    return json_response(workflow_view(await _find(request)))


@routes.delete(f"/api/v1/workflows/{{workflow_id:{WORKFLOW_ID_SEGMENT}}}")
@documented(Operation(
    summary="Cancel a workflow", tag="workflows", errors=(409, 503),
    description="Cancels every unfinished task; waiting ones never run.",
    responses={202: (WorkflowView, "Cancel requested for every unfinished task.")},
))
async def cancel_workflow(request: web.Request) -> web.Response:
    rows = await _find(request)
    if rows[0]["workflow_status"] != "running":
        raise Conflict(f"workflow {rows[0]['workflow_id']} already {rows[0]['workflow_status']}",
                       status=rows[0]["workflow_status"])
    publisher = request.app[PUBLISHER]
    unfinished = [r for r in rows if not TaskStatus(r["status"]).is_terminal]
    # The events make the cancels durable (dispatcher); broadcasts stop what already runs.
    await asyncio.gather(*(publisher.event(TaskCancelled(
        task_id=r["task_id"], run=r["run"], task_type=r["task_type"], kb_id=r["kb_id"],
        stage=r["stage"] or "default", attempt=max(r["attempts"], 1), reason="its workflow was cancelled",
        finished_at=utcnow())) for r in unfinished))
    await asyncio.gather(*(publisher.control(CancelTask(task_id=r["task_id"], reason="its workflow was cancelled"))
                           for r in unfinished if r["status"] != TaskStatus.WAITING))
    return json_response(workflow_view(await _find(request), cancel_requested=True), 202)


async def _check(request: web.Request, plan: WorkflowPlan) -> None:
    """The submission checks of every task, and the workflow's callback URL: one
    refused task refuses the workflow."""
    checks = request.app[CHECKS]
    errors: list[FieldError] = []
    # depends_on names refs here, checked with the graph: the parent checks have nothing to look up.
    standalone = [dataclasses.replace(v, request=v.request.model_copy(update={"depends_on": []})) for v in plan.tasks]
    outcomes = await checks.check_many(standalone, principal_of(request))
    for valid, outcome in zip(plan.tasks, outcomes, strict=True):
        if isinstance(outcome, Forbidden):
            raise outcome
        if outcome is not None:
            ref = WorkflowPlan.ref_of(valid)
            errors.extend(FieldError(f"tasks[{ref}].{e['field']}", e["message"])
                          for e in getattr(outcome, "errors", None) or [FieldError("", outcome.message)])
    if plan.callback_url:
        refused = await checks.check_callback_url(plan.callback_url)
        if refused:
            errors.append(FieldError("callback_url", refused))
    if errors:
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)


async def _find(request: web.Request) -> list[Any]:
    workflow_id = request.match_info["workflow_id"]
    if not is_task_id(workflow_id):
        raise NotFound(f"workflow {workflow_id!r} not found")
    async with request.app[ENGINE].connect() as conn:
        rows = await read_workflow(conn, workflow_id, scope=principal_of(request).kb_ids)
    if rows is None:
        raise NotFound(f"workflow {workflow_id!r} not found")
    return rows
