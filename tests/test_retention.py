"""The dispatcher's retention sweep (decision 0152) on the session fleet: finished
task rows older than TASK_RETENTION_SECONDS (30 days here) go with their callbacks,
ended workflows with their tasks; rows something still needs stay. The rows are
written straight into the fleet's database with ids and times of 40 days ago
(task ids are UUIDv7, so the id carries the creation time)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.engine import create_engine
from tests.support.eventually import eventually
from tests.support.fleet import Fleet

DAY = 86400


def _old_id(days: float = 40) -> str:
    ms = int((time.time() - days * DAY) * 1000)
    return str(uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0x2 << 62) | random.getrandbits(62)))


@pytest_asyncio.fixture(loop_scope="session")
async def db(fleet: Fleet) -> AsyncIterator[AsyncConnection]:
    engine = create_engine(fleet.environment.postgres)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
    await engine.dispose()


async def _task(db: AsyncConnection, status: str = "completed", finished_days_ago: float | None = 31) -> str:
    task_id = _old_id()
    await db.execute(text(
        "INSERT INTO tasks (id, task_type, kb_id, retry_limit, status, created_at, updated_at, finished_at) "
        "VALUES (CAST(:id AS uuid), 'echo', 'kb_retention', 3, :status, now() - interval '40 days', "
        # unfinished rows look recent, so the fleet's reconciler leaves them alone
        "CASE WHEN :finished THEN now() - make_interval(days => :done) ELSE now() END, "
        "CASE WHEN :finished THEN now() - make_interval(days => :done) END)"),
        {"id": task_id, "status": status, "done": int(finished_days_ago or 40),
         "finished": finished_days_ago is not None})
    return task_id


async def _callback(db: AsyncConnection, task_id: str, state: str, run: int = 1) -> None:
    # Due tomorrow: the fleet's callback sender does not try it during the test.
    await db.execute(text("INSERT INTO callbacks (task_id, run, url, state, next_attempt_at) "
                          "VALUES (CAST(:id AS uuid), :run, 'http://kb/cb', :state, now() + interval '1 day')"),
                     {"id": task_id, "run": run, "state": state})


async def test_old_finished_rows_are_swept_and_needed_ones_kept(db: AsyncConnection) -> None:
    plain = await _task(db)
    await _callback(db, plain, "delivered")
    kept = {
        "parent of a waiting dependant": await _task(db),
        "in a running workflow": await _task(db),
        "with a pending callback": await _task(db),
        "writer of a ready document": await _task(db),
        "holding a unique key": await _task(db),
        "still processing": await _task(db, "processing", None),
        "ended a day ago": await _task(db, finished_days_ago=1),
    }
    child = await _task(db, "waiting", None)
    await db.execute(text("INSERT INTO task_edges (parent_id, child_id) VALUES (CAST(:p AS uuid), CAST(:c AS uuid))"),
                     {"p": kept["parent of a waiting dependant"], "c": child})
    running, ended = _old_id(), _old_id()
    in_ended_workflow = await _task(db)
    for workflow, status, task_id in ((running, "running", kept["in a running workflow"]),
                                      (ended, "completed", in_ended_workflow)):
        await db.execute(text(
            "INSERT INTO workflows (id, created_by, status, created_at, finished_at) VALUES (CAST(:w AS uuid), "
            "'anonymous', :status, now() - interval '40 days', "
            "CASE WHEN :status = 'running' THEN NULL ELSE now() - interval '31 days' END)"),
            {"w": workflow, "status": status})
        await db.execute(text("INSERT INTO workflow_tasks (workflow_id, ref, task_id) "
                              "VALUES (CAST(:w AS uuid), 'a', CAST(:t AS uuid))"), {"w": workflow, "t": task_id})
    await _callback(db, ended, "delivered", run=0)
    await _callback(db, kept["with a pending callback"], "pending")
    await db.execute(text(
        "INSERT INTO kb_documents (kb_id, document_id, state, task_id) "
        "VALUES ('kb_retention', 'doc', 'ready', CAST(:t AS uuid))"), {"t": kept["writer of a ready document"]})
    await db.execute(text(
        "INSERT INTO unique_keys (owner, unique_key, task_id, expires_at) "
        "VALUES ('anonymous', 'retention-test', CAST(:t AS uuid), now() + interval '1 hour')"),
        {"t": kept["holding a unique key"]})

    async def swept() -> None:
        left = (await db.execute(text(
            "SELECT (SELECT count(*) FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))) "
            "     + (SELECT count(*) FROM callbacks WHERE task_id = ANY(CAST(:ids AS uuid[]))) "
            "     + (SELECT count(*) FROM workflows WHERE id = CAST(:w AS uuid))"),
            {"ids": [plain, in_ended_workflow, ended], "w": ended})).scalar()
        assert left == 0

    await eventually(swept, timeout=20)
    present = set((await db.execute(text("SELECT CAST(id AS text) FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                    {"ids": list(kept.values())})).scalars())
    assert {why for why, task_id in kept.items() if task_id not in present} == set()

    # Once nothing needs them, the same rows go too.
    await db.execute(text("UPDATE task_edges SET settled = true WHERE child_id = CAST(:c AS uuid)"), {"c": child})
    await db.execute(text("UPDATE workflows SET status = 'completed', finished_at = now() - interval '31 days' "
                          "WHERE id = CAST(:w AS uuid)"), {"w": running})
    await db.execute(text("DELETE FROM kb_documents WHERE kb_id = 'kb_retention'"))

    async def released() -> None:
        gone = {kept["parent of a waiting dependant"], kept["in a running workflow"], kept["writer of a ready document"]}
        left = (await db.execute(text("SELECT count(*) FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                 {"ids": list(gone)})).scalar()
        assert left == 0

    await eventually(released, timeout=20)
    await db.execute(text("DELETE FROM unique_keys WHERE unique_key = 'retention-test'"))
    await db.execute(text("DELETE FROM callbacks WHERE task_id = ANY(CAST(:ids AS uuid[]))"), {"ids": list(kept.values())})
    await db.execute(text("DELETE FROM tasks WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": [*kept.values(), child]})
