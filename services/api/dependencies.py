"""Task dependencies at admission (docs/decisions/0100).

Before admission, `parent_problems` answers which listed parents the caller
cannot name (unknown, or another tenant's: the same answer for both). In the
admission transaction, `plan_dependants` locks the parents (`FOR SHARE`) and
decides per task: run now (every parent already settled), wait (a `waiting`
row, its edges and its first-stage message), or refuse (a parent already
failed and the task would be cancelled: it could never run). The lock orders
this against the dispatcher recording a parent's end: whichever commits
second sees the other's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.errors import FieldError, InvalidRequest
from shared.security.api_keys import Principal
from shared.status import TaskStatus
from shared.task_request import ValidTask

_VISIBLE = text("SELECT CAST(id AS text) AS id, kb_id FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))")

# Ordered by id: two transactions lock shared parents in one order, never deadlock.
_LOCK_PARENTS = text("""
SELECT CAST(id AS text) AS id, status, result, error FROM tasks
WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR SHARE
""")

_INSERT_EDGES = text("""
INSERT INTO task_edges (parent_id, child_id, settled)
SELECT e.parent_id, e.child_id, e.settled
FROM jsonb_to_recordset(CAST(:edges AS jsonb)) AS e(parent_id uuid, child_id uuid, settled boolean)
ON CONFLICT DO NOTHING
""").bindparams(bindparam("edges", type_=JSONB))

_INSERT_WAITING = text("""
INSERT INTO waiting_tasks (task_id, message, remaining, on_parent_failure)
SELECT w.task_id, w.message, w.remaining, w.on_parent_failure
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS w(task_id uuid, message jsonb, remaining int, on_parent_failure text)
ON CONFLICT DO NOTHING
""").bindparams(bindparam("rows", type_=JSONB))


async def parent_problems(engine: AsyncEngine, items: Sequence[ValidTask], principal: Principal) -> list[list[FieldError]]:
    """Per item, the `depends_on` entries the caller may not name (one query for all)."""
    wanted = {p for v in items for p in v.request.depends_on}
    if not wanted:
        return [[] for _ in items]
    async with engine.connect() as conn:
        found = {r.id: r.kb_id for r in await conn.execute(_VISIBLE, {"ids": sorted(wanted)})}
    problems = []
    for valid in items:
        errors = [
            FieldError(f"depends_on.{i}", f"task {parent} not found (unknown, or not visible to this API key)")
            for i, parent in enumerate(valid.request.depends_on)
            if parent not in found or not principal.may_use_kb(found[parent])
        ]
        problems.append(errors)
    return problems


@dataclass(frozen=True)
class Plan:
    """What admission does with one task that has parents."""

    waiting: bool
    remaining: int = 0
    # Parents already ended: {parent_id: {"status", "result", "error"}}; a run-now task carries them.
    parents: dict[str, Any] = field(default_factory=dict)
    settled: frozenset[str] = frozenset()


async def plan_dependants(
    conn: AsyncConnection, items: Sequence[ValidTask]
) -> dict[int, Plan | InvalidRequest]:
    """For each item with parents (by index): wait, run now, or refuse. Locks the parents."""
    wanted = sorted({p for v in items for p in v.request.depends_on})
    if not wanted:
        return {}
    rows = {r.id: r for r in await conn.execute(_LOCK_PARENTS, {"ids": wanted})}
    plans: dict[int, Plan | InvalidRequest] = {}
    for index, valid in enumerate(items):
        parents = valid.request.depends_on
        if not parents:
            continue
        missing = [(i, p) for i, p in enumerate(parents) if p not in rows]
        if missing:  # checked before admission; only a parent deleted since lands here
            plans[index] = InvalidRequest("unknown parent task", [
                FieldError(f"depends_on.{i}", f"task {p} not found") for i, p in missing])
            continue
        ended = {p: rows[p] for p in parents if TaskStatus(rows[p].status).is_terminal}
        broken = [(i, p) for i, p in enumerate(parents)
                  if p in ended and ended[p].status != TaskStatus.COMPLETED]
        if broken and valid.request.on_parent_failure == "cancel":
            plans[index] = InvalidRequest("a parent already ended without completing", [
                FieldError(f"depends_on.{i}", f"task {p} already {rows[p].status}: this task could never run "
                                              "(send on_parent_failure: \"run\" to run it anyway)")
                for i, p in broken])
            continue
        plans[index] = Plan(
            waiting=len(ended) < len(parents),
            remaining=len(parents) - len(ended),
            parents={p: {"status": r.status, "result": r.result, "error": r.error} for p, r in ended.items()},
            settled=frozenset(ended),
        )
    return plans


async def record_waiting(
    conn: AsyncConnection, waiting: Sequence[tuple[str, ValidTask, Plan, Mapping[str, Any]]]
) -> None:
    """Edges and first-stage messages of tasks admitted as `waiting`: (task id, task, plan, message JSON)."""
    if not waiting:
        return
    edges = [
        {"parent_id": parent, "child_id": task_id, "settled": parent in plan.settled}
        for task_id, valid, plan, _ in waiting
        for parent in valid.request.depends_on
    ]
    await conn.execute(_INSERT_EDGES, {"edges": edges})
    await conn.execute(_INSERT_WAITING, {"rows": [
        {"task_id": task_id, "message": dict(message), "remaining": plan.remaining,
         "on_parent_failure": valid.request.on_parent_failure}
        for task_id, valid, plan, message in waiting
    ]})
