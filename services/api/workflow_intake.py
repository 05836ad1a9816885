"""One way in for workflows, over REST and `tm.submit` (docs/decisions/0101):
validate the body and the graph, run the submission checks on every task
and the workflow's callback URL, admit all or nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.submission_checks import SubmissionChecks
from services.api.workflow_admission import AdmittedWorkflow, admit_workflow
from services.api.workflow_request import WorkflowPlan, validate_workflow
from services.api.workflow_views import WorkflowCreated, created_view, read_workflow
from shared.amqp.publisher import Publisher
from shared.errors import FieldError, Forbidden, InvalidRequest
from shared.security.api_keys import Principal
from shared.task_request import RequestLimits
from shared.task_types import TaskTypeRegistry


class WorkflowIntake:
    def __init__(self, engine: AsyncEngine, publisher: Publisher, registry: TaskTypeRegistry, limits: RequestLimits,
                 checks: SubmissionChecks) -> None:
        self._engine = engine
        self._publisher = publisher
        self._registry = registry
        self._limits = limits
        self._checks = checks

    def validate(self, data: Any) -> WorkflowPlan:
        return validate_workflow(data, self._registry, self._limits)

    async def admit(self, plan: WorkflowPlan, principal: Principal, idempotency_key: str | None) -> AdmittedWorkflow:
        await self._check(plan, principal)
        return await admit_workflow(self._engine, self._publisher, plan, owner=principal.owner,
                                    idempotency_key=idempotency_key)

    async def created(self, admitted: AdmittedWorkflow) -> WorkflowCreated:
        """The answer to a submission: the workflow and each task's id and status."""
        async with self._engine.connect() as conn:
            rows = await read_workflow(conn, admitted.workflow_id, scope=None)
        assert rows is not None, "an admitted workflow is committed"
        return created_view(admitted.workflow_id, rows[0]["workflow_created_at"], rows)

    async def _check(self, plan: WorkflowPlan, principal: Principal) -> None:
        """The submission checks of every task, and the workflow's callback URL: one
        refused task refuses the workflow."""
        # depends_on names refs here, checked with the graph: the parent checks have nothing to look up.
        standalone = [dataclasses.replace(v, request=v.request.model_copy(update={"depends_on": []}))
                      for v in plan.tasks]
        errors: list[FieldError] = []
        for valid, outcome in zip(plan.tasks, await self._checks.check_many(standalone, principal), strict=True):
            if isinstance(outcome, Forbidden):
                raise outcome
            if outcome is not None:
                where = f"tasks.{plan.positions[WorkflowPlan.ref_of(valid)]}"
                errors.extend(FieldError(f"{where}.{e['field']}", e["message"])
                              for e in getattr(outcome, "errors", None) or [FieldError("task", outcome.message)])
        if plan.callback_url:
            refused = await self._checks.check_callback_url(plan.callback_url)
            if refused:
                errors.append(FieldError("callback_url", refused))
        if errors:
            raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)
