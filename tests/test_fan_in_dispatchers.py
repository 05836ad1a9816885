"""Several dispatchers settling one fan-in at the same moment (docs/decisions/0100).

Each child depends on two parents; the completion of one parent reaches one
dispatcher while the other parent's reaches another, in the same instant. The
two writers are the dispatcher's own `TaskStateWriter`, each on its own
connection pool (what two dispatcher processes are to PostgreSQL), driven by
the test so the two completions really commit at once and in crossing orders:
one dispatcher's batch meets the children in ascending order, the other's in
descending order. Every child must be released exactly once, and neither
transaction may be aborted as a deadlock.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatcher.state_fold import fold
from services.dispatcher.state_writer import TaskStateWriter
from shared.db.engine import create_engine
from shared.messages import TaskCompleted
from tests.conftest import FleetFactory

CHILDREN = 40
ROUNDS = 4

_TASKS = text("""
INSERT INTO tasks (id, task_type, retry_limit, status, stage, created_at, updated_at)
SELECT r.id, 'echo', 0, r.status, 'default', now(), now()
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id uuid, status text)
""").bindparams(bindparam("rows", type_=JSONB))
_EDGES = text("""
INSERT INTO task_edges (parent_id, child_id)
SELECT r.parent_id, r.child_id FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(parent_id uuid, child_id uuid)
""").bindparams(bindparam("rows", type_=JSONB))
_WAITING = text("""
INSERT INTO waiting_tasks (task_id, message, remaining)
SELECT r.task_id, r.message, 2 FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(task_id uuid, message jsonb)
""").bindparams(bindparam("rows", type_=JSONB))


def _ids(count: int) -> list[str]:
    """Time-ordered ids (as UUIDv7 task ids are), so a list's order is its id order."""
    return sorted(str(uuid.uuid4()) for _ in range(count))


async def _one_round(engines: tuple[AsyncEngine, AsyncEngine]) -> list[str]:
    children = _ids(CHILDREN)
    # `left[i]` and `right[i]` are child i's parents. The right parents' ids run the other
    # way, so the second dispatcher's batch settles (and locks) the children in reverse.
    left, right = _ids(CHILDREN), _ids(CHILDREN)[::-1]
    async with engines[0].begin() as conn:
        await conn.execute(_TASKS, {"rows": [{"id": i, "status": "processing"} for i in left + right]
                                    + [{"id": i, "status": "waiting"} for i in children]})
        await conn.execute(_EDGES, {"rows": [{"parent_id": p, "child_id": c}
                                             for parents in (left, right) for p, c in zip(parents, children,
                                                                                          strict=True)]})
        await conn.execute(_WAITING, {"rows": [{"task_id": c, "message": _message(c)} for c in children]})

    at = datetime.now(UTC)
    writers = [TaskStateWriter(engine, default_callback_url=None) for engine in engines]
    batches = [fold(_completed(p, at) for p in parents) for parents in (left, right)]
    start = asyncio.Event()

    async def dispatcher(writer: TaskStateWriter, batch: Any) -> None:
        await start.wait()
        await writer.apply(batch)

    runs = [asyncio.create_task(dispatcher(w, b)) for w, b in zip(writers, batches, strict=True)]
    await asyncio.sleep(0)
    start.set()
    await asyncio.gather(*runs)  # a deadlock would raise here: PostgreSQL aborts one of them
    return children


async def test_two_dispatchers_settling_one_fan_in_at_once_release_each_child_exactly_once(
    fleet_factory: FleetFactory,
) -> None:
    fleet = await fleet_factory(lambda _: None, start=False)  # the database alone: the writers are the dispatchers
    engines = (_big_table_plans(create_engine(fleet.environment.postgres)),
               _big_table_plans(create_engine(fleet.environment.postgres)))
    try:
        children: list[str] = []
        for _ in range(ROUNDS):
            children += await _one_round(engines)
        async with engines[0].connect() as conn:
            released = (await conn.execute(text(
                "SELECT CAST(task_id AS text) AS id FROM task_releases"))).scalars().all()
            statuses = dict((await conn.execute(text(
                "SELECT CAST(id AS text), status FROM tasks WHERE status IN ('waiting', 'queued')"))).all())
            left = (await conn.execute(text("SELECT count(*) FROM waiting_tasks"))).scalar_one()
            unsettled = (await conn.execute(text("SELECT count(*) FROM task_edges WHERE NOT settled"))).scalar_one()
        assert sorted(released) == sorted(children)  # each child once, none missing
        assert {statuses.get(c) for c in children} == {"queued"}
        assert left == 0 and unsettled == 0
    finally:
        for engine in engines:
            await engine.dispose()


def _big_table_plans(engine: AsyncEngine) -> AsyncEngine:
    """The plans PostgreSQL picks once waiting_tasks is large (index lookups in the batch's
    order, not one scan of a small table in its physical order), which is where crossing
    orders could deadlock."""
    @event.listens_for(engine.sync_engine, "connect")
    def _plans(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            cursor.execute(f"SET {setting} = off")
        cursor.close()
    return engine


def _completed(task_id: str, at: datetime) -> TaskCompleted:
    return TaskCompleted(task_id=task_id, task_type="echo", result={"parent": task_id}, at=at,
                         started_at=at - timedelta(seconds=1), finished_at=at)


def _message(task_id: str) -> dict[str, Any]:
    return {"v": 1, "task_id": task_id, "run": 1, "task_type": "gather", "payload": {}, "priority": "normal",
            "retry_limit": 0, "created_at": datetime.now(UTC).isoformat(), "stages": ["default"],
            "stage": "default", "context": {}}
