"""Admitting a workflow: every task, edge and waiting message in one
transaction, the roots published before it commits (docs/decisions/0101).
A refused publish or a database error rolls everything back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass

from loguru import logger
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api import dependencies
from services.api import task_repository as repo
from services.api.admission import busy_key, first_stage_message, keyed, task_row
from services.api.workflow_request import WorkflowPlan
from shared import concurrency_keys, metrics
from shared.amqp.publisher import Publisher
from shared.db.errors import DB_ERRORS
from shared.db.models import workflow_tasks
from shared.errors import TaskManagerError, Unavailable
from shared.ids import new_task_id
from shared.messages import CancelTask, TaskCancelled, utcnow
from shared.status import TaskStatus
from shared.task_request import ValidTask


@dataclass(frozen=True)
class AdmittedWorkflow:
    workflow_id: str
    created: bool  # False: an earlier workflow with the same idempotency key


class _Refused(Exception):
    def __init__(self, error: TaskManagerError) -> None:
        self.error = error


_INSERT_WORKFLOW = text("""
INSERT INTO workflows (id, created_by, callback_url, created_at, idempotency_key)
VALUES (CAST(:id AS uuid), :created_by, :callback_url, :created_at, :idempotency_key)
ON CONFLICT (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING CAST(id AS text) AS id
""")
_BY_KEY = text("""
SELECT CAST(id AS text) AS id FROM workflows WHERE created_by = :created_by AND idempotency_key = :idempotency_key
""")


async def admit_workflow(
    engine: AsyncEngine, publisher: Publisher, plan: WorkflowPlan, *, owner: str, idempotency_key: str | None = None
) -> AdmittedWorkflow:
    """Admit every task of `plan` or none. The same `idempotency_key` (per owner)
    answers the earlier workflow instead of creating a second."""
    now = utcnow()
    workflow_id = new_task_id()
    ids = {WorkflowPlan.ref_of(v): new_task_id() for v in plan.tasks}
    # Parents named by task id from here on, as for any task with depends_on.
    tasks = [dataclasses.replace(v, request=v.request.model_copy(
        update={"depends_on": [ids[ref] for ref in v.request.depends_on]})) for v in plan.tasks]
    rows = []
    for valid in tasks:
        row = task_row(valid, None, owner, now)
        row["id"] = ids[WorkflowPlan.ref_of(valid)]
        if valid.request.depends_on:
            row["status"] = TaskStatus.WAITING.value
        rows.append(row)
    roots = [(v, r) for v, r in zip(tasks, rows, strict=True) if not v.request.depends_on]
    try:
        async with engine.begin() as conn:
            inserted = (await conn.execute(_INSERT_WORKFLOW, {
                "id": workflow_id, "created_by": owner, "callback_url": plan.callback_url, "created_at": now,
                "idempotency_key": idempotency_key})).first()
            if inserted is None:  # the key is taken (a concurrent holder committed first: the unique index waited)
                existing = (await conn.execute(_BY_KEY, {"created_by": owner,
                                                         "idempotency_key": idempotency_key})).scalar_one()
                return AdmittedWorkflow(existing, created=False)
            await repo.insert_tasks(conn, rows)
            await dependencies.record_waiting(conn, [
                (str(r["id"]), v, dependencies.Plan(waiting=True, remaining=len(v.request.depends_on)),
                 first_stage_message(v, r).model_dump(mode="json"))
                for v, r in zip(tasks, rows, strict=True) if v.request.depends_on
            ])
            await conn.execute(insert(workflow_tasks), [
                {"workflow_id": workflow_id, "ref": ref, "task_id": task_id} for ref, task_id in ids.items()])
            # A root over its concurrency key's limit waits, queued, for a slot (decision 0160).
            gated = [k for v, r in roots if (k := keyed(v, r)) is not None]
            slots = await concurrency_keys.take(conn, gated)
            if "refused" in slots.values():
                raise _Refused(busy_key(next(r for _, r in roots if slots.get(str(r["id"])) == "refused")))
            roots = [(v, r) for v, r in roots if slots.get(str(r["id"]), "granted") == "granted"]
            outcomes = await asyncio.gather(*(publisher.task(first_stage_message(v, r)) for v, r in roots),
                                            return_exceptions=True)
            refused = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if refused is not None:  # leaving the block by an exception rolls the whole workflow back
                await _withdraw([root for root, o in zip(roots, outcomes, strict=True)
                                 if not isinstance(o, BaseException)], publisher)
                raise _Refused(refused if isinstance(refused, TaskManagerError)
                               else Unavailable("the broker did not accept the workflow's first tasks"))
    except _Refused as exc:
        raise exc.error from None
    except DB_ERRORS as exc:
        logger.warning("workflow admission failed: database unavailable ({})", type(exc).__name__)
        raise Unavailable("the task database is unavailable; retry shortly") from None
    for valid in tasks:
        metrics.tasks_submitted_total.labels(valid.task_type.name, "workflow").inc()
    logger.bind(workflow_id=workflow_id).debug("workflow of {} tasks accepted ({} roots)", len(rows), len(roots))
    return AdmittedWorkflow(workflow_id, created=True)


async def _withdraw(published: list[tuple[ValidTask, dict[str, object]]], publisher: Publisher) -> None:
    """Roots the broker took before another was refused: workers skip them (the
    broadcast) and their record says cancelled (the event), so nothing of the
    refused workflow runs."""
    for valid, row in published:
        task_id = str(row["id"])
        with contextlib.suppress(TaskManagerError):
            await publisher.control(CancelTask(task_id=task_id, reason="its workflow was not admitted"))
            await publisher.event(TaskCancelled(
                task_id=task_id, task_type=valid.task_type.name, kb_id=valid.request.kb_id,
                stage=valid.task_type.stages[0], reason="its workflow was not admitted", finished_at=utcnow()))
